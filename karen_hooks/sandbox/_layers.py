"""The isolation layers, each a small function that either applies or reports why not.

Child-side layers (run in a freshly forked sandbox child, before any plugin
code): session, network namespace, rlimits, dedicated uid, no_new_privs,
Landlock (raw syscalls via ctypes), seccomp (pyseccomp). The host-side layers
(cgroups, the tmpfs work dir) are in :mod:`._host_layers`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import resource
import signal
import stat
import struct
from collections.abc import Iterable
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000

# Landlock: syscall numbers are the same on every architecture (generic table).
_SYS_LL_CREATE, _SYS_LL_ADD, _SYS_LL_RESTRICT = 444, 445, 446
_LL_VERSION = 1
_LL_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
_FS_ALL_V1 = (1 << 13) - 1
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

#: Syscalls a plugin never needs; denied with EPERM by the seccomp layer.
#: ``socket`` covers TCP, UDP and unix sockets by path (the memory RPC uses an
#: already-open socketpair). io_uring is denied because its operations bypass
#: per-syscall filtering.
DENIED_SYSCALLS = (
    "socket", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
    "unshare", "setns", "pivot_root", "chroot", "keyctl", "add_key", "request_key", "bpf",
    "perf_event_open", "open_by_handle_at", "name_to_handle_at", "userfaultfd", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "acct", "swapon", "swapoff", "reboot", "syslog",
    "iopl", "ioperm", "quotactl", "fsopen", "fsmount", "open_tree", "move_mount", "fspick",
    "personality", "lookup_dcookie", "vmsplice",
    # System V IPC and POSIX message queues: objects that outlive every process of the call,
    # its cgroup and the host, which any later call (of any tenant) could open by key
    "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop",
    "semtimedop", "semctl", "ipc", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
    "mq_getsetattr",
    # a socketpair() socket addressed to a path (syslog, journald, sd_notify): the pair itself
    # needs none of these (send() is sendto() without an address, allowed below; sendmsg, which
    # the zygote needs to hand sockets to the host, is denied by CHILD_DENIED_SYSCALLS)
    "connect",
    # views of the host that Landlock's /proc rule does not cover: other processes (no PID
    # namespace), file activity anywhere readable, the mount table
    "pidfd_open", "inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init", "fanotify_mark",
    "mount_setattr",
)  # fmt: skip

#: Denied to call children only, by a second, small filter each loads (the zygote passes
#: descriptors to the host with sendmsg): its destination address is in memory, out of a
#: filter's sight, so a datagram could be sent to any socket path with it.
CHILD_DENIED_SYSCALLS = ("sendmsg", "sendmmsg")

#: Newer syscalls by number (the same on every architecture from 424 on), for a libseccomp too
#: old to know their names: statmount and listmount (the mount table), open_tree_attr.
DENIED_SYSCALL_NUMBERS = {"statmount": 457, "listmount": 458, "open_tree_attr": 467}

#: ``clone()`` flags that make a namespace: denied (EPERM) like ``unshare``. A user
#: namespace hands its creator every capability inside it, and with them much more
#: of the kernel to attack. (CLONE_NEWTIME's bit means something else to clone().)
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}


def _errcheck(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def prctl(option: int, arg: int = 0) -> None:
    _errcheck(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def read_to_eof(fd: int) -> bytes:
    """Everything a (forked helper's) pipe delivers until its writer closes it; closes ``fd``."""
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    return data


def set_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name: state, ppid, pgrp, session, ...
    (``proc(5)`` fields 3 onwards); ``None`` if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def user_namespace(pid: int | str = "self") -> str | None:
    """The user namespace of a process, as ``/proc/PID/ns/user`` names it (``user:[inode]``)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def kill_user_namespace(*namespaces: str) -> int:
    """SIGKILL every process (but this one) in any of the user ``namespaces``; returns how many.

    A non-root host's zygote makes a user namespace of its own (and one per slot inside
    it), and nothing but sandbox processes ever enters them: they hold every process of
    every call, including one that left its call's session with ``setsid``. So this
    reaches what a cgroup kill would. (Only processes of our own uid are readable and
    killable here, and a namespace's inode stays taken while any process is in it.)
    """
    me, n, wanted = os.getpid(), 0, set(namespaces)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and user_namespace(entry) in wanted:
            try:
                os.kill(int(entry), signal.SIGKILL)
                n += 1
            except OSError:
                pass
    return n


def kill_orphans(known: Iterable[int]) -> int:
    """SIGKILL every child of this (subreaper) process that is not in ``known``; returns how many.

    Used by the zygote when the host has no cgroup: a double-forked ``setsid``
    daemon escapes the call's process group, and without a cgroup nothing else
    finds it. As the subreaper, the zygote adopts it when its parent dies, so
    every child the zygote did not fork itself is such an orphan. Unreaped
    children keep their pids, so the kill cannot hit a reused pid.
    """
    keep = set(known)
    pids: set[int] = set()
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as fh:
                pids.update(int(x) for x in fh.read().split())
    except (OSError, ValueError):  # no CONFIG_PROC_CHILDREN: scan every process's parent
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (st := proc_stat(entry)) is not None and st[1] == str(me):
                pids.add(int(entry))
    n = 0
    for pid in pids - keep:
        try:
            os.kill(pid, signal.SIGKILL)
            n += 1
        except OSError:
            pass
    return n


def no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def unshare_net() -> None:
    _errcheck(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


# ---------------------------------------------------------------- landlock


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is unavailable."""
    ret = _libc.syscall(_SYS_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(_LL_VERSION))
    return int(ret) if ret > 0 else 0


def _fs_mask(abi: int) -> int:
    mask = _FS_ALL_V1
    if abi >= 2:
        mask |= 1 << 13  # REFER
    if abi >= 3:
        mask |= FS_TRUNCATE
    if abi >= 5:
        mask |= FS_IOCTL_DEV
    return mask


def landlock_ruleset(read_paths: Iterable[str], write_paths: Iterable[str], abi: int) -> tuple[int, dict[str, bool]]:
    """Build a ruleset fd allowing reads of ``read_paths`` and writes under ``write_paths``.

    TCP bind/connect is denied (ABI >= 4); signals and abstract unix sockets
    outside the sandbox are denied (ABI >= 6). Built once in the zygote and
    cached; a child enforces it with :func:`landlock_enforce` and closes it
    before any plugin code runs (so no plugin can add rules to it).
    """
    if abi < 1:
        raise OSError(errno.ENOSYS, "Landlock is not available")
    fs = _fs_mask(abi)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("=QQQ", fs, net, scoped)
    elif abi >= 4:
        attr = struct.pack("=QQ", fs, net)
    else:
        attr = struct.pack("=Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    rfd = _errcheck(
        _libc.syscall(_SYS_LL_CREATE, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)), "landlock_create_ruleset"
    )
    try:
        ro = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
        for path, access in [(p, ro) for p in read_paths] + [(p, fs) for p in write_paths]:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a missing optional path is simply not reachable
            try:
                allowed = access & fs
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    allowed &= _FILE_RIGHTS
                rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, pfd), 12)
                _errcheck(
                    _libc.syscall(
                        _SYS_LL_ADD, ctypes.c_int(rfd), ctypes.c_int(_LL_RULE_PATH_BENEATH), rule, ctypes.c_uint32(0)
                    ),
                    f"landlock_add_rule({path})",
                )
            finally:
                os.close(pfd)
    except BaseException:
        os.close(rfd)
        raise
    return rfd, {"landlock_fs": True, "landlock_net": bool(net), "landlock_scope": bool(scoped)}


def landlock_enforce(rfd: int) -> None:
    """Restrict this process with ruleset ``rfd`` (needs no_new_privs or CAP_SYS_ADMIN)."""
    _errcheck(_libc.syscall(_SYS_LL_RESTRICT, ctypes.c_int(rfd), ctypes.c_uint32(0)), "landlock_restrict_self")


# ---------------------------------------------------------------- seccomp


def seccomp_available() -> tuple[bool, str]:
    try:
        import pyseccomp  # noqa: F401
    except Exception as exc:  # ImportError, or OSError when libseccomp is missing
        return False, f"pyseccomp unavailable ({exc}); pip install pyseccomp (and the system's libseccomp)"
    return True, "pyseccomp"


def build_seccomp_filter() -> Any:
    """Build (but do not load) the deny-list filter. Built once in the zygote.

    ``clone3`` fails with ENOSYS: its flags sit in memory, where a filter cannot read
    them, and ENOSYS makes libc (threads, ``posix_spawn``) fall back to ``clone``,
    whose flags the filter checks.
    """
    import pyseccomp as sc

    flt = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except Exception:  # syscall unknown on this architecture
            continue
    for name, number in DENIED_SYSCALL_NUMBERS.items():
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except Exception:  # a libseccomp that does not know the name yet
            with contextlib.suppress(Exception):
                flt.add_rule(sc.ERRNO(errno.EPERM), number)
    # sendto() with a destination address (argument 4): send() on a socketpair passes none
    flt.add_rule(sc.ERRNO(errno.EPERM), "sendto", sc.Arg(4, sc.NE, 0))
    for flag in CLONE_NAMESPACE_FLAGS.values():  # clone()'s flags are its first argument on x86-64 and arm64
        flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    try:
        flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    except Exception:  # no clone3 on this architecture (or in this libseccomp): nothing to refuse
        pass
    return flt


# ---------------------------------------------------------------- rlimits


def child_filter_bpf() -> bytes:
    """The call children's extra filter (:data:`CHILD_DENIED_SYSCALLS`) as BPF, built once in the zygote.

    Loading BPF with prctl costs microseconds; having libseccomp generate it in every
    child cost about 0.25 ms.
    """
    import pyseccomp as sc

    flt = sc.SyscallFilter(sc.ALLOW)
    for name in CHILD_DENIED_SYSCALLS:
        flt.add_rule(sc.ERRNO(errno.EPERM), name)
    r, w = os.pipe()
    try:
        flt.export_bpf(os.fdopen(w, "wb", closefd=False))
    finally:
        os.close(w)
    return read_to_eof(r)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_bpf(program: bytes) -> None:
    """Install a seccomp filter given as BPF (8 bytes per instruction); needs no_new_privs."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _errcheck(_libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")  # SECCOMP_MODE_FILTER


def nproc_counted_per_userns(release: str | None = None) -> bool:
    """Whether this kernel counts RLIMIT_NPROC per user namespace (ucounts, Linux 5.14).

    Older kernels count every process of the real uid machine-wide: there, a cap set
    inside the zygote's namespace would also count the host's own processes.
    """
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return m is not None and (int(m[1]), int(m[2])) >= (5, 14)


def apply_rlimits(limits: dict[str, Any], warm_calls: int = 1, nproc: int = 0) -> None:
    """Set this process's rlimits from a call's limits; ``nproc`` is RLIMIT_NPROC (0: leave it unset).

    The caller picks ``nproc``: RLIMIT_NPROC counts every process of the real uid
    (in the caller's user namespace), so it is a per-call cap only with a dedicated
    uid, and a cap shared by all calls when the zygote has a user namespace of its own.
    """
    mib = 1 << 20
    cpu = int(limits["cpu_seconds"])
    # CPU: soft limit sends SIGXCPU; the hard limit (soft + 1) is a SIGKILL
    # even for a plugin that ignores SIGXCPU. A warm worker's hard limit covers
    # its whole life; its soft limit is re-armed before every call.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu * warm_calls + 1))
    # Address space: twice the memory limit, so huge allocations fail fast with
    # MemoryError while thread stacks (virtual, 8 MiB each) still fit; the
    # cgroup enforces the resident limit precisely.
    resource.setrlimit(resource.RLIMIT_AS, (2 * int(limits["memory_mb"]) * mib,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(limits["open_files"]),) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits["file_size_mb"]) * mib,) * 2)
    if nproc > 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # CPython ignores SIGXFSZ; restore the default so a write past the file
    # size limit kills instead of silently short-writing.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)


def rearm_cpu(cpu_seconds: int) -> None:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    used = int(ru.ru_utime + ru.ru_stime) + 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (min(used + cpu_seconds, hard), hard))


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
