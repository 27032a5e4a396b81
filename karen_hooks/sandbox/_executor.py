"""The public :class:`SandboxExecutor`: setup, slots handed to calls, warm workers, shutdown.

The zygote handle lives in :mod:`._zygote_handle`, slots and their tmpfs in :mod:`._slots`,
one sandbox process in :mod:`._worker` and one call's I/O loop in :mod:`._call`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import queue
import secrets
import socket
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from .._config import Limits, PluginSettings
from .._errors import SandboxError
from .._executor import CallOutcome, MemoryBridge
from .._models import PluginSpec
from . import _host_layers, _layers
from ._child import _reachable
from ._doctor import LayerStatus, SandboxLayerWarning, statuses_from
from ._pause import IdlePauser
from ._protocol import ProtocolError, encode
from ._slots import _Slot, _system_read_paths, private_slot_dir, probe_tmpfs
from ._tree import remove_tree
from ._worker import _Worker
from ._zygote_handle import _Zygote

log = logging.getLogger("karen_hooks.sandbox")

_INLINE_REQUEST = 32 << 10
_LIVE: weakref.WeakSet[SandboxExecutor] = weakref.WeakSet()
_WARNED: set[str] = set()


_SWEPT = False


def _sweep_once() -> None:
    """Once per process: remove what killed karen hosts left behind (mounts, dirs, cgroups)."""
    global _SWEPT
    if _SWEPT:
        return
    _SWEPT = True
    roots = []
    for ctrl in ("memory", "pids"):
        own = (_host_layers._own_cgroup(ctrl) or "/").lstrip("/")
        roots.append(os.path.join("/sys/fs/cgroup", ctrl, own))
    try:
        n = _host_layers.sweep_stale(tempfile.gettempdir(), roots)
    except Exception as exc:  # noqa: BLE001 - housekeeping must never stop the sandbox
        log.warning("could not remove leftovers of killed sandbox hosts: %s", exc)
        return
    if n:
        log.info("removed %d leftover(s) of killed sandbox hosts", n)


@atexit.register
def _close_all() -> None:
    """Unmount work dirs and remove cgroups of executors nobody closed."""
    for ex in list(_LIVE):
        with contextlib.suppress(Exception):
            ex.close()


def _uid_base_from_env(slots: int) -> int:
    """``KAREN_SANDBOX_UID_BASE``, checked: the slots (and the zygote) run as base .. base + slots.

    A base of 0 ran slot 0 as root, and a low one as system accounts (daemon, bin, ...), whose
    processes and files a sandboxed call could then reach.
    """
    raw = os.environ.get("KAREN_SANDBOX_UID_BASE", "61000").strip()
    fix = "set it to a free range of uids at or above 1000, e.g. 61000 (the default)"
    try:
        base = int(raw)
    except ValueError:
        raise ValueError(f"KAREN_SANDBOX_UID_BASE must be a whole number, got {raw!r}: {fix}") from None
    top = base + slots
    clash = ("root (0)" if base <= 0 <= top else "negative uids (no dedicated uid at all)" if base < 0
             else "system accounts (below 1000)" if base < 1000
             else "nobody (65534)" if base <= 65534 <= top else "uids past 2^31 - 1" if top >= 1 << 31 else "")
    if clash:
        raise ValueError(f"KAREN_SANDBOX_UID_BASE={base} would run the sandbox's {slots} slots (and its zygote) as "
                         f"uids {base}-{top}, which include {clash}: {fix}")
    return base


class SandboxExecutor:
    """Runs untrusted plugins' hooks in exec'd, layered sandbox processes.

    Thread-safe and usable from several event loops at once. ``slots`` bounds
    concurrent sandboxed calls; when the host runs as root each slot runs as
    its own unprivileged uid ``uid_base + slot`` (default 61000+; override with
    ``KAREN_SANDBOX_UID_BASE``).

    ``on_event(event, kind)`` (also a settable attribute) is told of every
    process start (``"start"``; kind ``fork``, ``warm`` or ``zygote``) and
    every kill (``"kill"``; kind is the reason: ``wall_time``, ``cpu``,
    ``memory``, ``stdout``, ... for limits, ``crash``, ``setup``,
    ``protocol``, ``cleanup`` for a retired warm worker, ``zygote`` for a
    replaced zygote), e.g. ``get_metrics(registry).sandbox_event``. It runs
    on the calling thread and must be quick; its exceptions are logged and
    ignored. Limit hits are not reported here (the manager counts them).
    """

    def __init__(self, slots: int | None = None, uid_base: int | None = None,
                 on_event: Callable[[str, str], None] | None = None) -> None:
        self.on_event = on_event
        self._nslots = slots or max(4, 2 * (os.cpu_count() or 1) + 2)
        if uid_base is None:
            uid_base = _uid_base_from_env(self._nslots)
        self._root = os.geteuid() == 0
        self._uid_base = uid_base
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._zyg: _Zygote | None = None
        self._closed = False
        if self._root:
            _sweep_once()
        self._base = tempfile.mkdtemp(prefix=f"karen-sandbox-{os.getpid()}-")
        os.chmod(self._base, 0o711)
        self._cgroups = _host_layers.CgroupManager(f"karen-sandbox-{os.getpid()}-{secrets.token_hex(3)}")
        self._slots: queue.Queue[_Slot] = queue.Queue()
        for i in range(self._nslots):
            uid = uid_base + i if self._root else -1
            cg = self._cgroups.slot(i) if self._cgroups.active else None
            self._slots.put(_Slot(i, uid, uid, cg))
        self._tmpfs_ok, self._tmpfs_why = probe_tmpfs(self._base, self._root, uid_base)
        self._read_paths = _system_read_paths()
        self._required: list[str] = []
        self._layer_status: list[LayerStatus] = []
        self._warm: dict[Any, _Worker] = {}
        self._describe_cache: dict[Any, dict[str, Any]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(self._nslots, thread_name_prefix="karen-sandbox")
        self._cleaner = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="karen-sandbox-cleanup")
        self._pauser = IdlePauser()  # stops idle warm workers
        self._reported = False
        self._ll_abi = _layers.landlock_abi()
        self._rulesets: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
        _LIVE.add(self)

    # -- setup ---------------------------------------------------------

    def _activate(self, zyg: _Zygote, sb: tuple[int, socket.socket], call_id: str, cfg: dict[str, Any],
                  fds: list[int]) -> bool:
        """Hand a call straight to a slot's standby child; ``False`` if it is gone."""
        pid, sock = sb
        ruleset = self._ruleset(cfg["read_paths"], [zyg.host_path(p) for p in cfg["write_paths"]])
        aliases: list[str] = []
        alias_fds: list[int] = []
        uid = int(cfg["uid"])
        if uid > 0:
            # a directory plugin's folder is usually also its only code path: check it once
            for p in dict.fromkeys(cfg["code_paths"] + ([cfg["spec"]["path"]] if cfg["spec"]["path"] else [])):
                if os.path.isdir(p) and not _reachable(p, uid, uid):
                    aliases.append(p)
                    alias_fds.append(os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        payload = {"cfg": cfg, "ruleset": ruleset is not None, "aliases": aliases}
        zyg.register(call_id, pid)
        try:
            socket.send_fds(sock, [json.dumps(payload).encode()],
                            fds + ([ruleset] if ruleset is not None else []) + alias_fds)
            return True
        except OSError:
            zyg.forget(call_id)
            return False
        finally:
            sock.close()
            for fd in alias_fds + ([ruleset] if ruleset is not None else []):
                os.close(fd)

    def _ruleset(self, read_paths: list[str], write_paths: list[str]) -> int | None:
        """A Landlock ruleset fd for these paths, built once in the host (never enforced on it).

        Returns a duplicate the caller closes: the cached one may be evicted (and closed) by
        another call before this one has sent it, and its number reused for another ruleset.
        """
        if self._ll_abi < 1:
            return None
        key = (tuple(read_paths), tuple(write_paths))
        with self._lock:
            fd = self._rulesets.get(key)
            if fd is None:
                if len(self._rulesets) >= 256:  # (one per slot and plugin: slots x plugins in use)
                    os.close(self._rulesets.pop(next(iter(self._rulesets))))
                try:
                    fd, _ = _layers.landlock_ruleset(read_paths, write_paths, self._ll_abi)
                except OSError as exc:
                    log.error("cannot build a Landlock ruleset: %s", exc)
                    return None
                self._rulesets[key] = fd
            return os.dup(fd)

    def _zygote(self, replace: _Zygote | None = None) -> _Zygote:
        with self._lock:
            if self._closed:
                raise SandboxError("<sandbox>", "the sandbox executor is closed")
            z = self._zyg
            if z is not None and (z is replace or not z.alive or z.proc.poll() is not None):
                z.kill()
                z = self._zyg = None
                self._event("kill", "zygote")
            if z is None:
                uid = self._uid_base + self._nslots if self._root else -1
                probe = {"workdir": self._base, "uid": uid, "gid": uid, "read_paths": self._read_paths,
                         "write_paths": [self._base, "/dev/null"], "limits": Limits().model_dump(), "env": {},
                         "userns_processes": self._userns_processes(Limits().processes),
                         "kill_orphans": not self._cgroups.active,  # nothing else finds a daemon then
                         "slots": self._nslots}
                if not self._root:  # no tmpfs mount for the host: ask the zygote for them in its own namespace
                    dirs = [private_slot_dir(self._base, i) for i in range(self._nslots)]
                    for d in dirs:
                        os.makedirs(d, mode=0o700, exist_ok=True)  # the mount points
                    probe["workdir_tmpfs"] = [dirs, Limits().work_dir_mb, 4096]
                z = self._zyg = _Zygote(probe)
                self._event("start", "zygote")
                self._set_layers(z.layers)
                for slot in list(self._slots.queue):  # forked by the zygote in the background
                    z.prepare(slot)
            return z

    def _userns_processes(self, processes: int) -> int:
        """RLIMIT_NPROC for a child when the zygote has a user namespace of its own (a non-root host).

        It counts every process in that namespace: the zygote, one standby or call child
        per slot, a standby forked for the slot while its call still runs, and what the
        calls fork. So one call gets its full ``processes`` while the others don't fork,
        and all of them together never exceed this.
        """
        return processes + 2 * self._nslots + 1

    def _set_layers(self, child: dict[str, list[Any]]) -> None:
        ok, why = child.get("workdir_quota", [self._tmpfs_ok, self._tmpfs_why])  # the zygote's, if it made one
        statuses = statuses_from(child, self._cgroups, bool(ok), str(why))
        if self._root:
            detail = f"unprivileged uid {self._uid_base} + slot number, one per slot (KAREN_SANDBOX_UID_BASE)"
            statuses = [LayerStatus(st.name, st.active, detail) if st.name == "uid" and st.active else st
                        for st in statuses]
        self._layer_status = statuses
        # every child-side layer that worked in the probe is demanded of every call's child:
        # if one cannot be applied later, the call fails instead of running with less isolation
        active = {s.name for s in statuses if s.active}
        required: list[str] = [n for n in ("netns", "rlimits", "uid", "seccomp") if n in active]
        if "landlock_fs" in active:
            required.append("landlock")
        if child.get("no_new_privs", [False])[0]:
            required.append("no_new_privs")
        self._required = required
        if not self._reported:
            self._reported = True
            for s in statuses:
                if not s.active and s.name not in _WARNED:  # once per process and layer
                    _WARNED.add(s.name)
                    log.warning("sandbox layer %s is MISSING on this machine: %s", s.name, s.detail)
                    warnings.warn(f"karen-hooks sandbox layer {s.name!r} is missing: {s.detail}",
                                  SandboxLayerWarning, stacklevel=3)

    def _event(self, event: str, kind: str) -> None:
        cb = self.on_event
        if cb is not None:
            try:
                cb(event, kind)
            except Exception:  # noqa: BLE001 - observability must never break a call
                log.exception("sandbox on_event callback failed for %s/%s", event, kind)

    def layers(self) -> list[LayerStatus]:
        """Which layers are active (starts the zygote if needed)."""
        self._zygote()
        return list(self._layer_status)

    def _acquire_slot(self, timeout: float) -> _Slot:
        try:
            return self._slots.get_nowait()
        except queue.Empty:
            pass
        # all slots busy: warm workers are a cache, so give back an idle one's slot
        with self._lock:
            idle = next((k for k, w in self._warm.items() if not w.lock.locked()), None)
            victim = self._warm.pop(idle) if idle is not None else None
        if victim is not None:
            with victim.lock:
                victim.retire()
        try:
            return self._slots.get(timeout=timeout)
        except queue.Empty:
            raise SandboxError("<sandbox>", f"no free sandbox slot within {timeout:g} s") from None

    def _release_slot(self, slot: _Slot) -> None:
        z = self._zyg
        if z is not None and z.alive and not self._closed:
            z.prepare(slot)
        self._slots.put(slot)

    # -- the Executor protocol ----------------------------------------------

    def describe(self, spec: PluginSpec, settings: PluginSettings, limits: Limits) -> dict[str, Any]:
        key: Any = (spec.distribution, spec.version) if spec.distribution and spec.version else spec
        with self._lock:
            cached = self._describe_cache.get(key)
        if cached is not None:
            return json.loads(json.dumps(cached))
        out = self._call_sync(spec, "karen_intent", {}, settings.model_copy(update={"mode": "fork"}), limits,
                              None, None).result
        if not isinstance(out, dict) or not isinstance(out.get("intents"), list) or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) for i in out["intents"]
        ):
            raise SandboxError(spec.name, "malformed reply from the sandbox: intents must be a list of objects")
        result = {"intents": out["intents"]}
        with self._lock:
            self._describe_cache[key] = result
        return json.loads(json.dumps(result))

    async def call(self, spec: PluginSpec, hook: str, kwargs: dict[str, Any], settings: PluginSettings,
                   limits: Limits, memory: MemoryBridge | None = None) -> CallOutcome:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise SandboxError(spec.name, "the sandbox executor is closed")
        return await loop.run_in_executor(
            self._pool, self._call_sync, spec, hook, kwargs, settings, limits, memory, loop)

    def call_sync(self, spec: PluginSpec, hook: str, kwargs: dict[str, Any], settings: PluginSettings,
                  limits: Limits, memory: MemoryBridge | None = None) -> CallOutcome:
        """Blocking variant of :meth:`call`, for threads without an event loop."""
        return self._call_sync(spec, hook, kwargs, settings, limits, memory, None)

    def _call_sync(self, spec: PluginSpec, hook: str, kwargs: dict[str, Any], settings: PluginSettings,
                   limits: Limits, memory: MemoryBridge | None, loop: asyncio.AbstractEventLoop | None
                   ) -> CallOutcome:
        request = {"op": "call", "hook": hook, "kwargs": kwargs}
        try:
            encoded = encode(request)  # validates once; the bytes are what goes on the wire
        except (TypeError, ValueError, ProtocolError) as exc:
            raise SandboxError(spec.name, f"call arguments are not JSON data: {exc}") from None
        except RecursionError:
            raise SandboxError(spec.name, "call arguments nest too deeply to send") from None
        if settings.mode != "warm":
            w = _Worker(self, spec, settings, limits, "fork", request if len(encoded) <= _INLINE_REQUEST else None)
            try:
                return w.run(encoded, memory, loop)
            finally:
                w.retire(background=True)
        key = (spec, tuple(sorted(settings.env.items())), limits.model_dump_json(), settings.warm_max_calls)
        while True:
            with self._lock:
                cur = self._warm.get(key)
            if cur is None or cur.dead:
                fresh = _Worker(self, spec, settings, limits, "warm")
                with self._lock:
                    cur = self._warm.get(key)
                    if cur is None or cur.dead:
                        self._warm[key] = cur = fresh
                if cur is not fresh:
                    fresh.retire()
            w = cur
            with w.lock:
                if w.dead:
                    continue
                try:
                    return w.run(encoded, memory, loop)
                finally:
                    if w.dead:
                        with self._lock:
                            if self._warm.get(key) is w:
                                del self._warm[key]

    def drop_warm(self) -> None:
        """Retire every warm worker now (they are restarted on their next call)."""
        with self._lock:
            warm, self._warm = list(self._warm.values()), {}
        for w in warm:
            with w.lock:
                w.retire()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            warm, self._warm = list(self._warm.values()), {}
        self._pauser.close()
        for w in warm:
            w.retire()
        self._pool.shutdown(wait=False)
        self._cleaner.shutdown(wait=True)
        if self._zyg is not None:
            self._zyg.kill()
        while True:
            try:
                slot = self._slots.get_nowait()
            except queue.Empty:
                break
            if slot.cg is not None:
                slot.cg.remove()
            if slot.tmpfs:
                with contextlib.suppress(OSError):
                    _host_layers.umount(slot.tmpfs)
        self._cgroups.remove()
        remove_tree(self._base)
        with self._lock:
            for fd in self._rulesets.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._rulesets.clear()

    def __enter__(self) -> SandboxExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()
