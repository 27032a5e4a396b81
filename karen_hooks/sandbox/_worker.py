"""One sandbox process as the host sees it: started from a standby child or the zygote, then retired."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .._config import Limits, PluginSettings
from .._errors import LimitExceeded
from .._executor import CallOutcome, MemoryBridge
from .._models import PluginSpec
from . import _slots
from ._call import _Channel, _drive, _Exchange, _fail, _from_reply
from ._pause import PAUSE_AFTER, pause, resume
from ._protocol import encode
from ._slots import _Slot
from ._tree import remove_tree

if TYPE_CHECKING:
    from ._executor import SandboxExecutor

log = logging.getLogger("karen_hooks.sandbox")
_EXIT_WAIT = 1.0
_STANDBY_WAIT = 1.0  # longest wait for a slot's standby child being forked, else the zygote forks one


class _Worker:
    """One sandbox child (a fork-per-call child, or a warm worker serving many calls)."""

    def __init__(self, ex: SandboxExecutor, spec: PluginSpec, settings: PluginSettings, limits: Limits,
                 mode: str, first: dict[str, Any] | None = None) -> None:
        self.ex = ex
        self.spec = spec
        self.limits = limits
        self.mode = mode
        self.calls = 0
        self.max_calls = settings.warm_max_calls if mode == "warm" else 1
        self.lock = threading.Lock()
        self.dead = False
        self.id = f"c{next(ex._ids)}"
        self.slot = ex._acquire_slot(limits.wall_seconds)
        self.workdir = ""
        self.workdir_host = ""  # the same dir, as the host reaches it
        self.mounted = False
        self.ch: _Channel | None = None
        # a small first request travels with the activation message (one round trip less)
        self.first = first
        self.pre = b""  # frames the child reads before its first request (env, when spawned by the zygote)
        self.paused = 0  # the pid of this warm worker while it is stopped between calls
        self.idle_since = 0.0  # when this warm worker's last call ended
        self.started = False
        try:
            self._start(settings)
        except BaseException:
            self.retire()
            raise
        self.started = True
        ex._event("start", mode)

    def _start(self, settings: PluginSettings) -> None:
        ex, slot, limits, spec = self.ex, self.slot, self.limits, self.spec
        zyg = ex._zygote()
        if ex._tmpfs_ok:
            _slots.slot_tmpfs(ex._base, slot, limits.work_dir_mb)
            self.workdir = self.workdir_host = os.path.join(slot.tmpfs, self.id)
            self.mounted = True
        else:
            # a non-root host's work dirs are in its zygote's tmpfs for the slot, reached through /proc
            parent = _slots.private_slot_dir(ex._base, slot.index) if zyg.private_workdirs else ex._base
            self.workdir = os.path.join(parent, self.id)
            self.workdir_host = zyg.host_path(self.workdir)
        os.mkdir(self.workdir_host, 0o700)
        if slot.uid > 0:
            os.chown(self.workdir, slot.uid, slot.gid)
        if slot.cg is not None:
            mem = (limits.memory_mb + (limits.work_dir_mb if self.mounted else 0)) << 20
            slot.cg.configure(mem, limits.processes)
        code_paths = [os.path.abspath(p) for p in spec.code_paths]
        read_paths = ex._read_paths + code_paths + ([os.path.abspath(spec.path)] if spec.path else [])
        cfg = {
            "spec": {"name": spec.name, "kind": spec.kind, "target": spec.target,
                     "path": os.path.abspath(spec.path) if spec.path else None},
            "code_paths": code_paths, "read_paths": read_paths, "workdir": self.workdir,
            # Landlock's write rule: the slot's own tmpfs (one ruleset per slot, built once), so no
            # call can write into another slot's work dir, even one its owner made world-writable
            "write_paths": [slot.tmpfs if self.mounted else ex._base if slot.uid > 0 else self.workdir, "/dev/null"],
            "uid": slot.uid, "gid": slot.gid, "limits": limits.model_dump(), "env": dict(settings.env),
            "mode": self.mode, "warm_calls": self.max_calls, "required": ex._required,
            "userns_processes": ex._userns_processes(limits.processes),
            "cgroup_procs": slot.cg.procs_files if slot.cg is not None else [],
        }
        if self.first is not None:
            cfg["first_request"] = self.first
        hs, cs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.ch = _Channel(hs, out_r, err_r, limits)
        try:
            self.zyg = zyg
            fds = [cs.fileno(), out_w, err_w]
            zyg.wait_standby(slot.index, _STANDBY_WAIT)
            sb = zyg.take_standby(slot.index)
            if sb is None or not ex._activate(zyg, sb, self.id, cfg, fds):
                # Through the zygote: it must never hold a plugin's env or a caller's params
                # (every later child is forked from its memory), so those go over the channel.
                zcfg = {k: v for k, v in cfg.items() if k not in ("env", "first_request")}
                zcfg["env_via_channel"] = True
                self.pre = encode({"op": "env", "env": cfg["env"]})
                self.first = None
                try:
                    self.zyg.spawn(self.id, slot.index, zcfg, fds)
                except OSError:
                    self.zyg = ex._zygote(replace=self.zyg)
                    self.zyg.spawn(self.id, slot.index, zcfg, fds)
        finally:
            cs.close()
            os.close(out_w)
            os.close(err_w)

    def run(self, encoded: bytes, memory: MemoryBridge | None,
            loop: asyncio.AbstractEventLoop | None) -> CallOutcome:
        assert self.ch is not None
        self.calls += 1
        inline, self.first = self.first, None
        cg = self.slot.cg
        if self.paused:  # a warm worker, stopped since it went idle
            resume(self.paused)
            self.paused = 0
        deadline = time.monotonic() + self.limits.wall_seconds
        try:
            pre, self.pre = self.pre, b""
            ex = _drive(self.ch, pre + (b"" if inline is not None else encoded), self.limits, memory, loop, deadline,
                        self.spec.name)
        except BaseException:  # never reuse a worker whose exchange broke half-way
            self.retire(background=True, reason="cleanup")
            raise
        if ex.reply is not None and not ex.timed_out and ex.limit is None:
            hit = cg.hit() if cg is not None and ex.reply.get("ok") is not True else set()
            ok = ex.reply.get("ok") is True
            if not ok or self.calls >= self.max_calls:
                self.retire(background=True)
            elif self.mode == "warm":
                # nothing the call started may run on while no call is active, even though the
                # worker stays: once idle for a moment it is stopped, the rest of the call killed
                self.idle_since = time.monotonic()
                self.ex._pauser.schedule(self)
            try:
                result = _from_reply(self.spec.name, ex.reply, ex, hit)
            except BaseException:
                self.retire(background=True)
                raise
            return CallOutcome(result, ex.stdout, ex.stderr)
        # failure without a usable reply: kill, then classify with the exit status
        if ex.timed_out and self.zyg.wait_for(self.id, "started", 0) is None:
            # the zygote never forked the child: it is wedged; replace it on the next call
            log.error("sandbox zygote %d did not start a call within %g s; replacing it", self.zyg.pid,
                      self.limits.wall_seconds)
            self.zyg.kill()
        self.zyg.kill_call(self.id)
        if cg is not None:
            cg.kill_all()
        info = self.zyg.wait_for(self.id, "exited", _EXIT_WAIT)
        hit = cg.hit() if cg is not None else set()
        err = _fail(self.spec.name, ex, info, hit, self.limits)
        self.retire(reason=_kill_reason(ex, err))
        raise err

    def pause_if_idle(self) -> None:
        """Stop this warm worker if it has been idle for ``PAUSE_AFTER`` (see :mod:`._pause`)."""
        if self.dead or self.paused:
            return
        if not self.lock.acquire(blocking=False):
            # a call has it (a new one, or the one that scheduled this, still returning): try again
            self.ex._pauser.schedule(self)
            return
        try:
            if self.dead or self.paused:
                return
            waited = time.monotonic() - self.idle_since
            if waited < PAUSE_AFTER:  # a call came and went since this was scheduled
                self.ex._pauser.schedule(self, PAUSE_AFTER - waited)
                return
            worker = self.zyg.wait_for(self.id, "started", 0)
            if worker is not None and pause(int(worker["pid"]), self.slot.cg):
                self.paused = int(worker["pid"])
            else:
                self.retire(background=True)  # not stopped, or leftovers unchecked: no reuse
        finally:
            self.lock.release()

    def retire(self, background: bool = False, reason: str | None = None) -> None:
        """Kill every process of this worker now; clean up (wait, unmount, free the slot) now or in background.

        ``reason`` is reported as a kill (a warm worker retired without one counts as ``cleanup``;
        a fork-per-call child that replied exits by itself and counts as no kill).
        """
        if self.dead:
            return
        self.dead = True
        if reason is None and self.mode == "warm":
            reason = "cleanup"
        if reason is not None and self.started:
            self.ex._event("kill", reason)
        if self.ch is not None:
            self.ch.close()
        zyg = getattr(self, "zyg", None)
        if self.slot.cg is not None:
            # every process of the call is in the slot's cgroup (a child that cannot join it
            # exits before serving), so this kills all of them; _finish repeats it until the
            # cgroup is empty. The zygote is asked too only when something went wrong or the
            # cgroup could not be read: a message per call wakes it and costs it copy-on-write faults.
            covered = self.slot.cg.kill_once()
            if zyg is not None and (reason is not None or not self.started or not covered):
                zyg.kill_call(self.id)
        elif zyg is not None:
            zyg.kill_call(self.id)
        if background and not self.ex._closed:
            try:
                self.ex._cleaner.submit(self._finish)
                return
            except RuntimeError:  # cleaner shut down
                pass
        self._finish()

    def _finish(self) -> None:
        """Wait for the call's processes, empty its cgroup, remove its work dir, free the slot.

        Often run on a cleaner thread, where an exception would vanish with the slot:
        anything unexpected is logged and the slot retired (never reused half-clean).
        """
        slot: _Slot | None
        try:
            slot = self._clean(self.slot)
        except Exception:  # noqa: BLE001 - logged; the slot is not reused
            log.exception("sandbox slot %d could not be cleaned after call %s; it is retired", self.slot.index,
                          self.id)
            slot = None
        if slot is not None:
            self.ex._release_slot(slot)

    def _clean(self, slot: _Slot | None) -> _Slot | None:
        """The cleanup of :meth:`_finish`; returns the slot if it may be reused."""
        zyg = getattr(self, "zyg", None)
        if slot is not None and slot.cg is not None:
            if zyg is not None and self.started:
                # the call's process was SIGKILLed (or is exiting): wait for the zygote's report
                # of its exit instead of polling the cgroup, then empty the cgroup of the rest
                zyg.wait_for(self.id, "exited", _EXIT_WAIT)
            if not slot.cg.kill_all():
                log.error("sandbox slot %d could not be emptied; it is retired", slot.index)
                slot = None
        elif zyg is not None:
            zyg.wait_for(self.id, "exited", _EXIT_WAIT)
        if zyg is not None:
            zyg.forget(self.id)
        # the plugin built what is in there (thousands of nested dirs, say); what cannot be
        # removed could be read by the slot's next call, so the slot is not reused then
        if self.workdir_host and not remove_tree(self.workdir_host) and slot is not None:
            log.error("sandbox slot %d: work dir %s could not be removed; the slot is retired", slot.index,
                      self.workdir_host)
            slot = None
        return slot


def _kill_reason(ex: _Exchange, err: Exception) -> str:
    """Why a call's processes were killed: the limit it hit, or what went wrong."""
    if isinstance(err, LimitExceeded):
        return err.limit  # wall_time, cpu, memory, stdout, stderr, reply_size, ...
    if ex.setup_error is not None:
        return "setup"
    if ex.protocol_error is not None:
        return "protocol"
    return "crash"
