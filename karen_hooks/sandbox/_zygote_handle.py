"""The host's handle on the zygote process: its control socket, reader thread and standby children."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .._errors import SandboxError
from . import _layers

if TYPE_CHECKING:
    from ._slots import _Slot

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[2]); "
    "from karen_hooks.sandbox._zygote import main; main(int(sys.argv[1]))"
)
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Zygote:
    """One exec'd zygote process and the thread reading its control socket."""

    def __init__(self, probe_cfg: dict[str, Any]) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        debug = os.environ.get("KAREN_SANDBOX_DEBUG") == "1"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, str(child.fileno()), _PKG_ROOT],
                env={}, close_fds=True, pass_fds=(child.fileno(),), start_new_session=True, cwd="/",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=None if debug else subprocess.DEVNULL,
            )
        finally:
            child.close()
        self.ctrl = parent
        # a wedged zygote must not block the host: sends time out (and the zygote is replaced)
        parent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 2, 0))
        self.pid = self.proc.pid
        # Without cgroups nothing else finds a call's processes once the zygote (their subreaper)
        # is gone: then the host kills them itself (see _kill_call_processes).
        self._kill_groups = bool(probe_cfg.get("kill_orphans"))
        self._userns: str | None = None  # set once the zygote has said hello
        self._slot_userns: list[str] = []  # and its slots' (see below)
        self._swept = False  # _kill_call_processes has run
        self.private_workdirs = False
        self.base = str(probe_cfg.get("workdir", ""))  # the sandbox base dir (under which the work dirs are)
        self._send_lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}
        # slot -> (pid, socket) of its pre-forked standby child
        self.standby: dict[int, tuple[int, socket.socket]] = {}
        self._preparing: set[int] = set()  # slots whose standby child is being forked
        self._by_pid: dict[int, str] = {}
        self._cond = threading.Condition()
        self.alive = True
        parent.settimeout(30)
        try:
            parent.send(json.dumps({"probe": probe_cfg}).encode())
            hello = json.loads(parent.recv(1 << 20).decode())
        except (OSError, ValueError) as exc:
            self.kill()
            raise SandboxError("<sandbox>", f"the sandbox zygote did not start: {exc}") from None
        parent.settimeout(None)
        self.layers: dict[str, list[Any]] = hello.get("layers", {})
        # Work dirs live in a tmpfs of the zygote's own mount namespace (a non-root host's): the
        # host reaches them through /proc/<zygote>/root (see host_path).
        self.private_workdirs = "workdir_tmpfs" in probe_cfg and bool(self.layers.get("workdir_quota", [False])[0])
        # The zygote's own user namespace (a non-root host's): every sandbox process is in it.
        ns = _layers.user_namespace(self.pid) if self._kill_groups else None
        self._userns = ns if ns is not None and ns != _layers.user_namespace() else None
        # and the user namespace of each slot inside it, which the call children join
        self._slot_userns = [str(n) for n in hello.get("slot_userns", [])] if self._userns is not None else []
        self._reader = threading.Thread(target=self._read_loop, name="karen-zygote-reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.ctrl, 1 << 16, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                break
            try:
                msg = json.loads(data.decode())
            except ValueError:
                msg = {}
            if msg.get("op") == "prepared" and len(fds) == 1:
                os.set_inheritable(fds[0], False)
                sock = socket.socket(fileno=fds[0])
                with self._cond:
                    old = self.standby.pop(int(msg.get("slot", -1)), None)
                    self.standby[int(msg.get("slot", -1))] = (int(msg.get("pid", 0)), sock)
                    self._preparing.discard(int(msg.get("slot", -1)))
                    self._cond.notify_all()
                if old is not None:
                    old[1].close()
                continue
            for fd in fds:
                os.close(fd)
            with self._cond:
                cid = str(msg.get("id"))
                if cid.startswith("standby:"):
                    cid = self._by_pid.get(int(msg.get("pid", 0)), cid)
                rec = self._pending.get(cid)
                if rec is not None:
                    rec[str(msg.get("op"))] = msg
                    self._cond.notify_all()
        with self._cond:
            self.alive = False
            self._cond.notify_all()
        self._kill_call_processes()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)

    def host_path(self, path: str) -> str:
        """Where the host finds ``path`` as the zygote and its children see it.

        Only work dirs differ: a non-root host's zygote covers each slot's dir under the
        sandbox base dir with a capped tmpfs in a mount namespace of its own, which the
        host reaches through the zygote's root (same uid, so /proc lets it).
        """
        return f"/proc/{self.pid}/root{path}" if self.private_workdirs and path.startswith(self.base + "/") else path

    def _kill_call_processes(self) -> None:
        """SIGKILL every process of every call and standby child; once the zygote is gone.

        Each child is a session (and group) leader; what it forked stays in its group
        unless it ran ``setsid`` itself, and then it is still in the zygote's user
        namespace, which is swept too. Without this, a call running when its zygote
        dies (killed, or ``close()`` mid-call) would be re-parented to PID 1 and run on.
        A group id stays allocated while any member lives, so this cannot hit a
        stranger's group while the call's processes exist.
        """
        if not self._kill_groups:
            return  # the executor kills the slots' cgroups instead
        with self._cond:
            # kill() and the reader thread both get here once the zygote is gone: one sweep
            # (a scan of /proc) is enough, as nothing is left to fork new sandbox processes
            if self._swept:
                return
            self._swept = True
            pids = set(self._by_pid) | {pid for pid, _sock in self.standby.values()}
            pids |= {rec["started"].get("pid") for rec in self._pending.values() if "started" in rec}
        for pid in pids:
            if isinstance(pid, int) and pid > 1:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        if self._userns is not None:  # and those that left their group with setsid
            _layers.kill_user_namespace(self._userns, *self._slot_userns)

    def wait_standby(self, slot: int, timeout: float) -> None:
        """Wait (up to ``timeout``) for the standby child of ``slot`` if one is being forked.

        A slot goes back to the free list as soon as its standby is requested; a
        call that takes it right away waits the ~2 ms for that standby instead of
        having the zygote fork another child on the call's critical path (whose
        cleanup would also kill the standby that then joins the slot's cgroup).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while slot not in self.standby and slot in self._preparing and self.alive:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def take_standby(self, slot: int) -> tuple[int, socket.socket] | None:
        with self._cond:
            return self.standby.pop(slot, None)

    def register(self, call_id: str, pid: int) -> None:
        """A standby child now serves ``call_id``: route its exit status there."""
        with self._cond:
            self._pending[call_id] = {"started": {"pid": pid}}
            self._by_pid[pid] = call_id

    def prepare(self, slot: _Slot) -> None:
        """Ask for a standby child for ``slot`` (forked and placed in its cgroup ahead of time)."""
        procs = slot.cg.procs_files if slot.cg is not None else []
        with self._cond:
            self._preparing.add(slot.index)
        try:
            with self._send_lock:
                self.ctrl.send(json.dumps({"op": "prepare", "slot": slot.index, "cgroup_procs": procs}).encode())
        except OSError:
            with self._cond:
                self._preparing.discard(slot.index)

    def spawn(self, call_id: str, slot: int, cfg: dict[str, Any], fds: list[int]) -> None:
        with self._cond:
            self._pending[call_id] = {}
        data = json.dumps({"op": "spawn", "id": call_id, "slot": slot, "cfg": cfg}).encode()
        with self._send_lock:
            socket.send_fds(self.ctrl, [data], fds)

    def wait_for(self, call_id: str, op: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                rec = self._pending.get(call_id, {})
                if op in rec:
                    return rec[op]
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive:
                    return rec.get(op)
                self._cond.wait(left)

    def forget(self, call_id: str) -> None:
        with self._cond:
            rec = self._pending.pop(call_id, None)
            pid = (rec or {}).get("started", {}).get("pid")
            if pid is not None and self._by_pid.get(pid) == call_id:
                del self._by_pid[pid]

    def kill_call(self, call_id: str) -> None:
        with self._cond:
            pid = self._pending.get(call_id, {}).get("started", {}).get("pid")
        with contextlib.suppress(OSError), self._send_lock:
            self.ctrl.send(json.dumps({"op": "kill", "id": call_id, "pid": pid}).encode())

    def kill(self) -> None:
        self.alive = False
        with self._cond:
            standby, self.standby = list(self.standby.values()), {}
        for _pid, sock in standby:  # a standby exits when its socket closes
            sock.close()
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        self._kill_call_processes()
        with contextlib.suppress(OSError):
            self.ctrl.close()
