"""A network namespace for a host that is not root: inside an unprivileged user namespace.

``unshare(CLONE_NEWNET)`` needs ``CAP_SYS_ADMIN``. Without it, the kernel (if it
allows unprivileged user namespaces) still lets a process create a user
namespace and, in the same call, a network namespace owned by it. The price is
that the process then holds a **full** capability set inside that user
namespace, which every fork would inherit; so the zygote drops all of them
(effective, permitted, inheritable, ambient and the bounding set) before it
forks anything, and checks ``/proc/self/status`` that they are gone.

The root path never comes here: as root the zygote keeps using plain
``unshare(CLONE_NEWNET)``, and the children switch to their dedicated uids,
which a 1:1 user namespace mapping of the host's uid could not represent.
"""

from __future__ import annotations

import ctypes
import os

from ._layers import CLONE_NEWNET, _errcheck, _libc, prctl, read_to_eof

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
#: the capability sets /proc/self/status shows; each must be 0 after :func:`drop_capabilities`
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capabilities() -> dict[str, int]:
    """This process's capability sets as /proc/self/status shows them (CapEff, CapPrm, ...)."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in CAP_FIELDS:
                out[key] = int(value.strip(), 16)
    return out


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 63  # drop every bit the 64-bit sets can hold; unknown ones fail with EINVAL below


def drop_capabilities() -> None:
    """Drop every capability of this process, then verify that none is left.

    The bounding set first (``PR_CAPBSET_DROP`` needs ``CAP_SETPCAP``, which goes
    with the permitted set), so no later ``execve`` of a file with capabilities
    can regain any; then the ambient set; then effective/permitted/inheritable
    with ``capset``, which only ever needs to lower them. Raises ``OSError`` if a
    set is not empty afterwards.
    """
    for cap in range(_last_cap() + 1):
        if _libc.prctl(PR_CAPBSET_READ, ctypes.c_ulong(cap), 0, 0, 0) == 1:
            prctl(PR_CAPBSET_DROP, cap)
    try:
        _errcheck(_libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0),
                  "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    except OSError:
        pass  # kernel < 4.3 has no ambient set; nothing to clear there
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # version 3: two 32-bit halves, all zero
    _errcheck(_libc.capset(ctypes.byref(header), data), "capset(all zero)")
    left = {k: v for k, v in capabilities().items() if v}
    if left:
        raise OSError(f"capabilities left after dropping them all: {left}")


def _write_proc(name: str, text: str) -> None:
    fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def unshare_user_net(tmpfs: tuple[list[str], int, int] | None = None) -> tuple[str, str | None]:
    """Enter a new user namespace and a new, empty network namespace; hold no capabilities after.

    With ``tmpfs`` (directories, size in MiB, inodes), also a private mount
    namespace in which a size- and inode-capped tmpfs covers each directory (one
    per slot: the calls' work dirs are made in them), mounted while the
    namespace's capabilities are still held. Returns ``(description,
    tmpfs_problem)``; the problem is ``None`` when every tmpfs is mounted (or none
    was asked for), and a failed mount leaves the rest in place.

    The user namespace maps only the caller's uid and gid, each to itself, so
    files keep their owner and the process keeps its ids; every other id shows
    as the overflow id (nobody). ``setgroups`` is denied first, as the kernel
    requires before an unprivileged process may write its ``gid_map``.

    Raises ``OSError`` when the namespaces cannot be created (nothing changed
    then). Once they exist there is no way back, so a failure to map the ids or
    to drop the capabilities raises ``RuntimeError`` instead: the caller must
    not go on (it would fork children holding capabilities, or with unmapped
    ids that cannot create files).
    """
    uid, gid = os.geteuid(), os.getegid()
    problem = None
    if tmpfs and _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) != 0:
        # a mount namespace refused (a container's policy, say) must not cost the network namespace
        problem = f"no private mount namespace for the work dirs: {os.strerror(ctypes.get_errno())}"
        tmpfs = None
    if not tmpfs:  # not asked for, or refused just now
        _errcheck(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    try:
        try:
            _map_ids(uid, gid)
            if tmpfs:
                problem = _private_tmpfs(*tmpfs, uid=uid, gid=gid)
        finally:
            drop_capabilities()  # also when a mapping failed: never keep the namespace's full set
    except OSError as exc:
        raise RuntimeError(f"in a new user namespace but could not finish setting it up: {exc}") from exc
    return (f"private empty network namespace inside an unprivileged user namespace (uid {uid} and gid {gid} "
            f"mapped to themselves; no capabilities: effective, permitted, inheritable, ambient and bounding "
            f"sets are empty)"), problem


def _map_ids(uid: int, gid: int) -> None:
    """Map ``uid`` and ``gid`` to themselves in the user namespace this process just entered."""
    _write_proc("setgroups", "deny")  # required before an unprivileged process may write gid_map
    _write_proc("uid_map", f"{uid} {uid} 1")
    _write_proc("gid_map", f"{gid} {gid} 1")


def slot_namespace() -> int:
    """A new user namespace, a child of this process's, held by the returned descriptor.

    One per slot, made by the zygote of a host that is not root: each of the slot's
    call children enters it (:func:`enter_namespace`), so ``RLIMIT_NPROC``, which
    Linux >= 5.14 counts per user namespace, counts that slot's processes alone. A
    forked helper creates it, since ``unshare`` would move this process itself; it
    maps its ids to themselves as :func:`unshare_user_net` does, waits until this
    process has opened ``/proc/HELPER/ns/user``, and exits. Raises ``OSError``.
    """
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked helper
        os.close(ready_r)
        os.close(hold_w)
        try:
            uid, gid = os.geteuid(), os.getegid()
            _errcheck(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
            _map_ids(uid, gid)
            os.write(ready_w, b"ok")
            os.read(hold_r, 1)  # returns once the parent has the namespace open and closes its end
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(ready_w, (str(exc) or type(exc).__name__).encode()[:4096])
        os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    try:
        said = os.read(ready_r, 4096)
        if said != b"ok":
            raise OSError(f"no user namespace for a slot: {said.decode(errors='replace') or 'the helper died'}")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(hold_w)
        os.waitpid(pid, 0)


def enter_namespace(fd: int) -> None:
    """Join the user namespace ``fd`` from :func:`slot_namespace`, holding no capabilities after.

    Joining grants every capability inside it (this process's uid owns it), so all
    of them are dropped again at once; ``OSError`` if either step fails, and the
    caller must not go on.
    """
    _errcheck(_libc.setns(fd, CLONE_NEWUSER), "setns(CLONE_NEWUSER)")
    drop_capabilities()


def _private_tmpfs(paths: list[str], size_mb: int, inodes: int, *, uid: int, gid: int) -> str | None:
    """Cover each of ``paths`` with a capped tmpfs in this (new, private) mount namespace; why not, if one fails."""
    from ._host_layers import mount_tmpfs, umount

    done: list[str] = []
    try:
        # nothing mounted here may propagate back to the host's namespace
        _errcheck(_libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None), "make / private")
        for path in paths:
            mount_tmpfs(path, size_mb, uid, gid, inodes=inodes, mode=0o700)
            done.append(path)
    except OSError as exc:
        for path in done:  # all or none: the host decides where work dirs go by one answer
            try:
                umount(path)
            except OSError:
                return f"{exc}; and {path} could not be unmounted again"
        return str(exc)
    return None


def trial() -> str:
    """Run :func:`unshare_user_net` in a throwaway child; returns "" if it worked, else why not.

    Entering the namespaces cannot be undone, and a failure half-way (e.g. a
    ``uid_map`` this process may not write because it is not dumpable) leaves a
    process that must not go on. Trying it in a forked child first lets the
    zygote degrade to "no network namespace" (reported) instead of dying.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        os.close(r)
        try:
            unshare_user_net()  # (no tmpfs: the mount needs nothing the namespace does not give)
            why = b""
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            why = (str(exc) or type(exc).__name__).encode()[:4096]
        os.write(w, why)
        os._exit(0)
    os.close(w)
    data = read_to_eof(r)
    _pid, status = os.waitpid(pid, 0)
    if not data and status != 0:
        return f"the trial child died (wait status {status})"
    return data.decode(errors="replace")
