"""Host-side layers: cgroups (v1 or v2) for memory and pids, the size-capped tmpfs work dir,
and removing what killed hosts left behind. The child-side layers are in :mod:`._layers`."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal

from ._layers import _errcheck, _libc
from ._tree import remove_tree


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


def _read_small(path: str) -> bytes:
    """A whole (small) control file with raw os calls.

    Three or more are read per call; a Python file object adds an fstat, an
    ioctl (isatty) and an lseek to each, and about 25 us. Each call is a fresh
    open, which cgroup v1's cgroup.procs needs (it caches a pid list per open file).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


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
        return _read_small(os.path.join(self.dirs[ctrl], name)).decode()

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

    def pids(self) -> set[int] | None:
        """Every process in the slot, or ``None`` when the list could not be read (never taken for empty).

        Re-opened each time: cgroup v1 caches a list per open file.
        """
        ctrl = "pids" if "pids" in self.dirs else next(iter(self.dirs))
        # every process joins all the slot's controllers; one list is enough
        try:
            return {int(x) for x in _read_small(os.path.join(self.dirs[ctrl], "cgroup.procs")).split()}
        except (OSError, ValueError):
            return None

    def kill_others(self, keep: int) -> bool:
        """Kill every process in the slot except ``keep`` (a warm worker between calls).

        ``False`` if the process list could not be read: the caller must not keep the worker.
        """
        pids = self.pids()
        for pid in pids or ():
            if pid != keep:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return pids is not None

    def kill_once(self) -> bool:
        """One SIGKILL pass over the slot (the caller's return is not delayed by exits).

        ``False`` if the slot's process list could not be read (e.g. the host is out of
        descriptors), so the caller can fall back to another way of killing.
        """
        pids = self.pids()
        for pid in pids or ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids is not None

    def kill_all(self, timeout: float = 2.0) -> bool:
        """SIGKILL every process in the slot and wait until it is empty.

        ``False`` if it is not seen empty by ``timeout`` -- including when its process
        list cannot be read (an unreadable list is never taken for an empty slot:
        the caller then retires the slot rather than reuse it with a process alive).
        """
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
            if pids is not None and not pids:
                return True
            for pid in pids or ():
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
        remove_tree(base)
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
