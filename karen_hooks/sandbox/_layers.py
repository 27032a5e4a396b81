"""The isolation layers, each a small function that either applies or reports why not.

Child-side layers (run in a freshly forked sandbox child, before any plugin
code): session, network namespace, rlimits, dedicated uid, no_new_privs,
Landlock (raw syscalls via ctypes), seccomp (pyseccomp). Host-side layers:
cgroup (v1 or v2) for memory and pids, a size-capped tmpfs work dir.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
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
)  # fmt: skip


def _errcheck(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def prctl(option: int, arg: int = 0) -> None:
    _errcheck(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def set_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


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
        return False, f"pyseccomp unavailable ({exc}); install karen-hooks[seccomp]"
    return True, "pyseccomp"


def build_seccomp_filter() -> Any:
    """Build (but do not load) the deny-list filter. Built once in the zygote."""
    import pyseccomp as sc

    flt = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except Exception:  # syscall unknown on this architecture
            continue
    return flt


# ---------------------------------------------------------------- rlimits


def apply_rlimits(limits: dict[str, Any], warm_calls: int = 1, nproc: bool = True) -> None:
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
    if nproc:
        # RLIMIT_NPROC counts every process of the real uid: only meaningful with
        # a dedicated sandbox uid (otherwise the cgroup pids limit does the job).
        resource.setrlimit(resource.RLIMIT_NPROC, (int(limits["processes"]),) * 2)
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


# ---------------------------------------------------------------- host side: cgroups


def _own_cgroup(controller: str) -> str | None:
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if controller in ctrls.split(","):
                    return path
    except OSError:
        return None
    return None


class CgroupSlot:
    """One reusable cgroup (memory + pids) a single call runs in at a time."""

    def __init__(self, dirs: dict[str, str], v2: bool) -> None:
        self.dirs = dirs
        self.v2 = v2
        self._base: dict[str, int] = {}
        self._configured: tuple[int, int] | None = None
        self.has_memsw = "memory" in dirs and os.path.exists(os.path.join(dirs["memory"], "memory.memsw.limit_in_bytes"))

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    def _write(self, ctrl: str, name: str, value: str) -> None:
        with open(os.path.join(self.dirs[ctrl], name), "w") as fh:
            fh.write(value)

    def _read(self, ctrl: str, name: str) -> str:
        with open(os.path.join(self.dirs[ctrl], name)) as fh:
            return fh.read()

    def configure(self, memory_bytes: int, pids: int) -> None:
        if self.v2:
            self._write("memory", "memory.max", str(memory_bytes))
            self._write("memory", "memory.swap.max", "0") if os.path.exists(
                os.path.join(self.dirs["memory"], "memory.swap.max")) else None
            self._write("pids", "pids.max", str(pids))
        else:
            if self._configured != (memory_bytes, pids):
                self._set_v1_memory(memory_bytes)
                self._write("pids", "pids.max", str(pids))
                self._configured = (memory_bytes, pids)
        self._base = self.counters()

    def _set_v1_memory(self, limit: int) -> None:
        # memory.limit_in_bytes must stay <= memory.memsw.limit_in_bytes: raise
        # memsw first when growing, lower memory first when shrinking.
        names = ["memory.limit_in_bytes"] + (["memory.memsw.limit_in_bytes"] if self.has_memsw else [])
        try:
            cur = int(self._read("memory", "memory.limit_in_bytes"))
        except (OSError, ValueError):
            cur = 0
        if limit > cur:
            names.reverse()
        for name in names:
            try:
                self._write("memory", name, str(limit))
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                self._write("memory", "memory.force_empty", "0")
                self._write("memory", name, str(limit))

    def counters(self) -> dict[str, int]:
        out = {"memory": 0, "pids": 0}
        try:
            if self.v2:
                for line in self._read("memory", "memory.events").splitlines():
                    k, v = line.split()
                    if k in ("oom_kill", "max"):
                        out["memory"] += int(v)
            else:
                for line in self._read("memory", "memory.oom_control").splitlines():
                    k, v = line.split()
                    if k == "oom_kill":
                        out["memory"] += int(v)
        except (OSError, ValueError):
            pass
        try:
            for line in self._read("pids", "pids.events").splitlines():
                k, v = line.split()
                if k == "max":
                    out["pids"] = int(v)
        except (OSError, ValueError):
            pass
        return out

    def hit(self) -> set[str]:
        now = self.counters()
        return {k for k, v in now.items() if v > self._base.get(k, 0)}

    def pids(self) -> set[int]:
        """Every process in the slot (re-opened each time: cgroup v1 caches a list per open file)."""
        ctrl = "pids" if "pids" in self.dirs else next(iter(self.dirs))
        # every process joins all the slot's controllers; one list is enough
        try:
            with open(os.path.join(self.dirs[ctrl], "cgroup.procs"), "rb") as fh:
                return {int(x) for x in fh.read().split()}
        except (OSError, ValueError):
            return set()

    def kill_others(self, keep: int) -> None:
        """Kill every process in the slot except ``keep`` (a warm worker between calls)."""
        for pid in self.pids():
            if pid != keep:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def kill_once(self) -> None:
        """One SIGKILL pass over the slot (the caller's return is not delayed by exits)."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill_all(self, timeout: float = 2.0) -> bool:
        """SIGKILL every process in the slot and wait until it is empty."""
        import time

        if self.v2 and os.path.exists(os.path.join(self.dirs["pids"], "cgroup.kill")):
            try:
                self._write("pids", "cgroup.kill", "1")
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def remove(self) -> None:
        self.kill_all(0.5)
        for d in self.dirs.values():
            try:
                os.rmdir(d)
            except OSError:
                pass


class CgroupManager:
    """Creates a private cgroup subtree for this executor and hands out slots."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.v2 = False
        self.roots: dict[str, str] = {}
        self.problem = ""
        try:
            self._setup()
        except OSError as exc:
            self.problem = f"{exc}"
            self.roots = {}

    @property
    def active(self) -> bool:
        return bool(self.roots)

    def _setup(self) -> None:
        base = "/sys/fs/cgroup"
        v1 = {c: os.path.join(base, c) for c in ("memory", "pids")}
        if all(os.path.exists(os.path.join(p, "cgroup.procs")) and os.path.exists(os.path.join(p, "tasks"))
               for p in v1.values()):
            for ctrl, mount in v1.items():
                own = (_own_cgroup(ctrl) or "/").lstrip("/")
                root = os.path.join(mount, own, self.name)
                os.makedirs(root, exist_ok=True)
                self.roots[ctrl] = root
            return
        ctrl_file = os.path.join(base, "cgroup.controllers")
        if os.path.exists(ctrl_file):
            with open(ctrl_file) as fh:
                avail = fh.read().split()
            if "memory" not in avail or "pids" not in avail:
                raise OSError(errno.ENOTSUP, "cgroup v2 without memory+pids controllers")
            own = (_own_cgroup("") or "/").lstrip("/")
            root = os.path.join(base, own, self.name)
            os.makedirs(root, exist_ok=True)
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as fh:
                fh.write("+memory +pids")
            self.v2 = True
            self.roots = {"memory": root, "pids": root}
            return
        raise OSError(errno.ENOENT, "no usable cgroup v1 memory+pids or v2 hierarchy")

    def slot(self, index: int) -> CgroupSlot:
        dirs = {}
        for ctrl, root in self.roots.items():
            d = os.path.join(root, f"slot{index}")
            os.makedirs(d, exist_ok=True)
            dirs[ctrl] = d
        return CgroupSlot(dirs, self.v2)

    def remove(self) -> None:
        for root in set(self.roots.values()):
            try:
                os.rmdir(root)
            except OSError:
                pass


# ---------------------------------------------------------------- host side: tmpfs work dir


def mount_tmpfs(path: str, size_mb: int, uid: int, gid: int, inodes: int = 4096, mode: int = 0o700,
                remount: bool = False) -> None:
    opts = f"size={size_mb}m,nr_inodes={inodes},mode={mode:o},uid={uid},gid={gid}".encode()
    flags = 0x2 | 0x4 | 0x8 | (0x20 if remount else 0)  # MS_NOSUID | MS_NODEV | MS_NOEXEC [| MS_REMOUNT]
    _errcheck(_libc.mount(b"tmpfs", path.encode(), b"tmpfs", ctypes.c_ulong(flags), opts), f"mount tmpfs {path}")


def umount(path: str) -> None:
    _errcheck(_libc.umount2(path.encode(), 2), f"umount {path}")  # MNT_DETACH


# ---------------------------------------------------------------- leftovers of killed hosts


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(tmp_root: str, cgroup_roots: list[str]) -> int:
    """Remove work dirs, tmpfs mounts and cgroups left by karen hosts that were killed.

    Names carry the creating host's pid (``karen-sandbox-<pid>-<random>``);
    only resources whose host is gone are touched. Returns how many were removed.
    """
    import re
    import shutil

    name = re.compile(r"^karen-sandbox-(\d+)-")
    removed = 0
    mounts: list[str] = []
    try:
        with open("/proc/self/mounts") as fh:
            mounts = [line.split()[1] for line in fh]
    except OSError:
        pass
    try:
        entries = os.listdir(tmp_root)
    except OSError:
        entries = []
    for entry in entries:
        m = name.match(entry)
        if not m or _pid_alive(int(m.group(1))):
            continue
        base = os.path.join(tmp_root, entry)
        for mp in mounts:
            if mp.startswith(base + "/"):
                with contextlib.suppress(OSError):
                    umount(mp)
        shutil.rmtree(base, ignore_errors=True)
        removed += 1
    for root in cgroup_roots:
        try:
            entries = os.listdir(root)
        except OSError:
            continue
        for entry in entries:
            m = name.match(entry)
            if not m or _pid_alive(int(m.group(1))):
                continue
            top = os.path.join(root, entry)
            for slot in sorted(os.listdir(top)) if os.path.isdir(top) else []:
                d = os.path.join(top, slot)
                if os.path.isdir(d):
                    CgroupSlot({"x": d}, v2=False).kill_all(0.5)
                    with contextlib.suppress(OSError):
                        os.rmdir(d)
            with contextlib.suppress(OSError):
                os.rmdir(top)
                removed += 1
    return removed
