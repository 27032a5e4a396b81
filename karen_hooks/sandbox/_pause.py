"""A warm worker between calls: stopped, and alone.

A warm worker's process outlives its call, and so would anything it left running:
a thread that keeps forking, a child burning CPU, with no call (and no wall time)
active. A worker idle for :data:`PAUSE_AFTER` is stopped with SIGSTOP, which no
plugin can catch or ignore, and, once every thread of it has stopped, every other
process of the call is killed; its next call continues it (SIGCONT). Waiting that
long first keeps the stop off back-to-back calls, which it would slow by a
third of a millisecond each.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import signal
import threading
import time
from typing import Any

from ._layers import proc_stat

#: how long a warm worker may run on after its call before it is stopped
PAUSE_AFTER = 0.005
_STOP_WAIT = 0.5  # longest wait for every thread to stop (they are interrupted at once)


class IdlePauser:
    """One daemon thread that calls ``worker.pause_if_idle()`` when a worker may have gone idle.

    At most one entry per worker is queued: a warm worker serving calls back to back
    would otherwise queue one per call (and the thread would spend its time on them).
    ``pause_if_idle`` itself checks that the worker has really been idle long enough,
    and schedules again if not.
    """

    def __init__(self, after: float = PAUSE_AFTER) -> None:
        self.after = after
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, Any]] = []  # (when, tie-break, worker)
        self._queued: set[int] = set()  # id() of every worker in _due
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def schedule(self, worker: Any, delay: float | None = None) -> None:
        with self._cond:
            if self._closed or id(worker) in self._queued:
                return
            self._queued.add(id(worker))
            when = time.monotonic() + (self.after if delay is None else delay)
            heapq.heappush(self._due, (when, next(self._seq), worker))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="karen-sandbox-pauser", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._due.clear()
            self._queued.clear()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    self._cond.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._closed:
                    return
                _when, _seq, worker = heapq.heappop(self._due)
                self._queued.discard(id(worker))
            try:
                worker.pause_if_idle()
            except Exception:  # noqa: BLE001 - a worker that cannot be paused retires itself
                pass


def pause(pid: int, cgroup: Any) -> bool:
    """Stop warm worker ``pid`` and kill every other process of its call.

    ``cgroup`` is the slot's cgroup (which holds every process of the call), or
    ``None`` on a host without one, where the worker's descendants are found through
    ``/proc/PID/task/*/children`` (an orphan of a double fork is the zygote's to kill).
    ``False`` if the worker could not be stopped or its processes not be listed: the
    caller must not keep it.
    """
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    if not _stopped(pid, time.monotonic() + _STOP_WAIT):
        return False
    # only now: a fork in flight when SIGSTOP was sent has finished, and its child is listed.
    # Until nothing but the stopped worker is left: a listed process can fork (and exit) before
    # its SIGKILL lands, and its child was not on the list.
    deadline = time.monotonic() + _STOP_WAIT
    while True:
        others = (None if (pids := cgroup.pids()) is None else [p for p in pids if p != pid]) \
            if cgroup is not None else _descendants(pid)
        if others is None or time.monotonic() > deadline:
            return False  # unreadable, or a chain that outruns the kills: the worker is not kept
        if not others:
            break
        for other in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGKILL)
        time.sleep(0.0005)
    # A child could have sent the worker SIGCONT before it was killed; nothing else can now
    # (other calls are outside its Landlock domain or run as other uids): check once more.
    return _stopped(pid, time.monotonic())


def resume(pid: int) -> None:
    """Let a paused warm worker run its next call."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _stopped(pid: int, deadline: float) -> bool:
    """Whether every thread of ``pid`` is stopped (state T) before ``deadline``."""
    while True:
        try:
            stats = [proc_stat(f"{pid}/task/{tid}") for tid in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            return False
        if any(st is None for st in stats):
            return False
        if all(st is not None and st[0] in ("T", "t") for st in stats):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0002)


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, theirs, ...), from /proc/PID/task/TID/children.

    Zombies are left out: killed already, they wait for the (stopped) worker to reap them.
    """
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return [p for p in found if (st := proc_stat(p)) is not None and st[0] not in ("Z", "X")]
