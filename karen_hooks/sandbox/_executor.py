"""Host side of the sandbox: the zygote handle, slots, the per-call I/O loop."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import inspect
import itertools
import json
import logging
import os
import queue
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
import weakref
from dataclasses import asdict
from typing import Any

from .._config import Limits, PluginSettings
from .._errors import InvalidResult, LimitExceeded, PluginError, PluginTimeout, SandboxError
from .._executor import CallOutcome, MemoryBridge
from .._models import PluginSpec
from . import _layers
from ._child import _reachable
from ._doctor import LayerStatus, SandboxLayerWarning, statuses_from
from ._protocol import FrameBuffer, FrameTooLargeError, ProtocolError, encode

log = logging.getLogger("karen_hooks.sandbox")

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[2]); "
    "from karen_hooks.sandbox._zygote import main; main(int(sys.argv[1]))"
)
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PKG_DIR = os.path.join(_PKG_ROOT, "karen_hooks")
_LIMIT_NAMES = {"cpu", "memory", "processes", "open_files", "file_size", "stdout", "stderr", "reply_size"}
_MEMORY_METHODS = ("write", "read", "delete", "list")
_FORBIDDEN_KWARG_PARTS = ("tenant", "user", "backend", "scope", "credential")
_EXIT_WAIT = 1.0
_MAX_MEMORY_RPCS = 1000
_INLINE_REQUEST = 32 << 10
_SIGNAMES = {int(s): s.name for s in signal.Signals}
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
        own = (_layers._own_cgroup(ctrl) or "/").lstrip("/")
        roots.append(os.path.join("/sys/fs/cgroup", ctrl, own))
    try:
        n = _layers.sweep_stale(tempfile.gettempdir(), roots)
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


def _system_read_paths() -> list[str]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {_PKG_DIR}
    paths |= {"/usr/lib", "/lib", "/lib64", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache",
              "/etc/localtime", "/usr/share/zoneinfo", "/dev/urandom", "/dev/zero"}
    return sorted(p for p in paths if os.path.exists(p))


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
        self._send_lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}
        # slot -> (pid, socket) of its pre-forked standby child
        self.standby: dict[int, tuple[int, socket.socket]] = {}
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
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)

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
        with contextlib.suppress(OSError), self._send_lock:
            self.ctrl.send(json.dumps({"op": "prepare", "slot": slot.index, "cgroup_procs": procs}).encode())

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
        with contextlib.suppress(OSError):
            self.ctrl.close()


class _Slot:
    def __init__(self, index: int, uid: int, gid: int, cg: _layers.CgroupSlot | None) -> None:
        self.index = index
        self.uid = uid
        self.gid = gid
        self.cg = cg
        self.tmpfs = ""  # this slot's size-capped tmpfs; each call gets a fresh dir in it
        self.tmpfs_mb = 0


class _Stream:
    """A capped reader of one output pipe; never holds more than ``cap`` bytes."""

    def __init__(self, name: str, cap: int) -> None:
        self.name = name
        self.cap = cap
        self.buf = bytearray()
        self.eof = False
        self.over = False

    def feed(self, data: bytes) -> None:
        if not data:
            self.eof = True
            return
        room = self.cap - len(self.buf)
        if len(data) > room:
            self.over = True
            data = data[: max(room, 0)]
        self.buf += data

    def drain(self, fd: int) -> None:
        """Read whatever is in the pipe now (data written before the reply is all there)."""
        while not self.eof and not self.over:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            self.feed(data)

    def take(self) -> str:
        text = bytes(self.buf).decode("utf-8", "replace")
        self.buf.clear()
        return text


class _Channel:
    """Host end of one sandbox child: protocol socket + stdout/stderr pipes."""

    def __init__(self, sock: socket.socket, out_r: int, err_r: int, limits: Limits) -> None:
        self.sock = sock
        self.out_r = out_r
        self.err_r = err_r
        sock.setblocking(False)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        self.streams = {out_r: _Stream("stdout", limits.stdout_bytes), err_r: _Stream("stderr", limits.stderr_bytes)}
        self.sel = selectors.DefaultSelector()
        self.sel.register(sock, selectors.EVENT_READ)
        for fd in self.streams:
            self.sel.register(fd, selectors.EVENT_READ)
        self.sock_open = True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sel.close()
        with contextlib.suppress(OSError):
            self.sock.close()
        for fd in (self.out_r, self.err_r):
            with contextlib.suppress(OSError):
                os.close(fd)


class _Exchange:
    """The result of driving one request through a channel."""

    def __init__(self) -> None:
        self.reply: dict[str, Any] | None = None
        self.setup_error: str | None = None
        self.timed_out = False
        self.limit: tuple[str, str] | None = None
        self.protocol_error: str | None = None
        self.eof = False
        self.stdout = ""
        self.stderr = ""


def _drive(
    ch: _Channel, request: bytes, limits: Limits, memory: MemoryBridge | None,
    loop: asyncio.AbstractEventLoop | None, deadline: float,
) -> _Exchange:
    """Send ``request`` (unless it went with the activation) and pump the channel until a reply,
    a limit, a crash or the deadline."""
    ex = _Exchange()
    streams = ch.streams
    frames = FrameBuffer(limits.reply_bytes)
    outbuf = bytearray(request)  # empty when the request went with the activation
    sel = ch.sel
    want_write = False
    rpcs = 0
    try:
        # the request usually goes out in one send; only a huge one needs the selector
        try:
            n = ch.sock.send(outbuf)
            del outbuf[:n]
        except BlockingIOError:
            pass
        except OSError:
            outbuf.clear()
        if outbuf:
            sel.modify(ch.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            want_write = True
        grace_until: float | None = None
        while True:
            if ex.reply is not None:
                for fd, st in streams.items():
                    st.drain(fd)
                    if st.over:
                        ex.limit = (st.name, f"more than {st.cap} bytes written")
                break
            if not ch.sock_open and all(st.eof for st in streams.values()):
                break
            now = time.monotonic()
            if now >= deadline:
                ex.timed_out = True
                break
            if grace_until is not None and now >= grace_until:
                break
            timeout = deadline - now if grace_until is None else min(deadline, grace_until) - now
            for key, mask in sel.select(timeout):
                if key.fileobj is ch.sock:
                    if mask & selectors.EVENT_WRITE and outbuf:
                        try:
                            n = ch.sock.send(outbuf)
                            del outbuf[:n]
                        except BlockingIOError:
                            pass
                        except OSError:
                            outbuf.clear()
                    if want_write and not outbuf:
                        sel.modify(ch.sock, selectors.EVENT_READ)
                        want_write = False
                    if not mask & selectors.EVENT_READ:
                        continue
                    try:
                        data = ch.sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        ch.sock_open = False
                        ex.eof = True
                        sel.unregister(ch.sock)
                        grace_until = time.monotonic() + 0.25  # collect a crash's last words
                        break
                    try:
                        msgs = frames.feed(data)
                    except FrameTooLargeError as exc:
                        ex.limit = ("reply_size", f"reply of {exc.size} bytes exceeds {exc.cap}")
                        return ex
                    except ProtocolError as exc:
                        ex.protocol_error = str(exc)
                        return ex
                    for msg in msgs:
                        op = msg.get("op")
                        if op == "result" and ex.reply is None:
                            ex.reply = msg
                        elif op == "memory" and ex.reply is None:
                            rpcs += 1
                            answer = (_memory_rpc(msg, memory, loop, deadline) if rpcs <= _MAX_MEMORY_RPCS else
                                      {"ok": False, "error": f"more than {_MAX_MEMORY_RPCS} memory calls in one call"})
                            outbuf += encode(answer)
                            if not want_write:
                                sel.modify(ch.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
                                want_write = True
                        elif op == "setup_error":
                            ex.setup_error = str(msg.get("message", ""))[:2000]
                            return ex
                        else:
                            ex.protocol_error = f"unexpected message {str(op)[:40]!r}"
                            return ex
                else:
                    st = streams[key.fd]
                    try:
                        data = os.read(key.fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    st.feed(data)
                    if st.eof:
                        sel.unregister(key.fd)
                    if st.over:
                        ex.limit = (st.name, f"more than {st.cap} bytes written")
                        return ex
        return ex
    finally:
        ex.stdout = streams[ch.out_r].take()
        ex.stderr = streams[ch.err_r].take()
        if want_write and ch.sock_open:
            with contextlib.suppress(Exception):
                sel.modify(ch.sock, selectors.EVENT_READ)


def _memory_rpc(msg: dict[str, Any], memory: MemoryBridge | None, loop: asyncio.AbstractEventLoop | None,
                deadline: float) -> dict[str, Any]:
    method = msg.get("method")
    args = msg.get("args", [])
    kwargs = msg.get("kwargs", {})
    if memory is None:
        return {"ok": False, "error": "no memory is available to this call"}
    if method not in _MEMORY_METHODS or not callable(getattr(memory, str(method), None)):
        return {"ok": False, "error": f"memory method {str(method)[:40]!r} is not allowed"}
    if not isinstance(args, list) or len(args) > 4 or not isinstance(kwargs, dict):
        return {"ok": False, "error": "memory arguments must be a short list and a dict"}
    for k in kwargs:
        if not isinstance(k, str) or k.startswith("_") or any(p in k.lower() for p in _FORBIDDEN_KWARG_PARTS):
            return {"ok": False, "error": f"memory argument {str(k)[:40]!r} is not allowed"}
    try:
        value = getattr(memory, str(method))(*args, **kwargs)
        if inspect.isawaitable(value):
            if loop is not None and loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(_as_coro(value), loop)
                value = fut.result(max(0.0, deadline - time.monotonic()))
            else:
                value = asyncio.run(_as_coro(value))
        return {"ok": True, "value": _to_json(value)}
    except Exception as exc:  # the bridge's failure goes back to the plugin
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}


async def _as_coro(aw: Any) -> Any:
    return await aw


def _to_json(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=_default, allow_nan=False))


def _default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)


def _fail(plugin: str, ex: _Exchange, exit_info: dict[str, Any] | None, cg_hit: set[str],
          limits: Limits) -> Exception:
    """Turn a failed exchange into the typed error the host raises."""
    err = ex.stderr
    if ex.timed_out:
        return PluginTimeout(plugin, limits.wall_seconds, stderr=err)
    if ex.limit is not None:
        return LimitExceeded(plugin, ex.limit[0], ex.limit[1], stderr=err)
    if ex.setup_error is not None:
        return SandboxError(plugin, f"sandbox setup failed: {ex.setup_error}", stderr=err)
    if ex.protocol_error is not None:
        return SandboxError(plugin, f"malformed reply from the sandbox: {ex.protocol_error}", stderr=err)
    sig = int(exit_info.get("signal") or 0) if exit_info else 0
    cpu = float(exit_info.get("cpu") or 0.0) if exit_info else 0.0
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds - 0.05):
        return LimitExceeded(plugin, "cpu", f"used {cpu:.2f} s of CPU, limit {limits.cpu_seconds} s", stderr=err)
    if sig == signal.SIGXFSZ:
        return LimitExceeded(plugin, "file_size", f"wrote past {limits.file_size_mb} MiB", stderr=err)
    if "memory" in cg_hit:
        return LimitExceeded(plugin, "memory", f"over {limits.memory_mb} MiB (killed by the cgroup)", stderr=err)
    if sig:
        return SandboxError(plugin, f"sandbox process crashed with {_SIGNAMES.get(sig, sig)}", stderr=err)
    if exit_info is not None:
        return SandboxError(plugin, f"sandbox process exited with code {exit_info.get('code')} without a reply",
                            stderr=err)
    return SandboxError(plugin, "sandbox process died without a reply", stderr=err)


def _from_reply(plugin: str, reply: dict[str, Any], ex: _Exchange, cg_hit: set[str]) -> Any:
    """Validate a reply (it may be forged) and return the result or raise."""
    ok = reply.get("ok")
    if ok is True and "result" in reply:
        return reply["result"]
    if ok is not False:
        raise SandboxError(plugin, "malformed reply from the sandbox: bad 'ok' field", stderr=ex.stderr)
    kind = reply.get("kind")
    message = str(reply.get("message", ""))[:4000]
    if kind == "limit":
        lim = str(reply.get("limit"))
        if lim not in _LIMIT_NAMES:
            raise SandboxError(plugin, f"malformed reply: unknown limit {lim[:40]!r}", stderr=ex.stderr)
        raise LimitExceeded(plugin, lim, message, stderr=ex.stderr)
    if kind == "invalid_result":
        raise InvalidResult(plugin, message, stderr=ex.stderr)
    if kind == "error":
        if "processes" in cg_hit and "fork" in message.lower():
            raise LimitExceeded(plugin, "processes", message, stderr=ex.stderr)
        raise PluginError(plugin, f"{str(reply.get('type', 'Exception'))[:200]}: {message}",
                          plugin_traceback=str(reply.get("traceback", ""))[:65536], stderr=ex.stderr)
    raise SandboxError(plugin, "malformed reply from the sandbox: unknown kind", stderr=ex.stderr)


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
        self.mounted = False
        self.ch: _Channel | None = None
        # a small first request travels with the activation message (one round trip less)
        self.first = first
        self.pre = b""  # frames the child reads before its first request (env, when spawned by the zygote)
        try:
            self._start(settings)
        except BaseException:
            self.retire()
            raise

    def _start(self, settings: PluginSettings) -> None:
        ex, slot, limits, spec = self.ex, self.slot, self.limits, self.spec
        if ex._tmpfs_ok:
            ex._slot_tmpfs(slot, limits.work_dir_mb)
            self.workdir = os.path.join(slot.tmpfs, self.id)
            self.mounted = True
        else:
            self.workdir = os.path.join(ex._base, self.id)
        os.mkdir(self.workdir, 0o700)
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
            "write_paths": [ex._base if slot.uid > 0 else self.workdir, "/dev/null"],
            "uid": slot.uid, "gid": slot.gid, "limits": limits.model_dump(), "env": dict(settings.env),
            "mode": self.mode, "warm_calls": self.max_calls, "required": ex._required,
            "cgroup_procs": slot.cg.procs_files if slot.cg is not None else [],
        }
        if self.first is not None:
            cfg["first_request"] = self.first
        hs, cs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.ch = _Channel(hs, out_r, err_r, limits)
        try:
            self.zyg = ex._zygote()
            fds = [cs.fileno(), out_w, err_w]
            sb = self.zyg.take_standby(slot.index)
            if sb is None or not ex._activate(self.zyg, sb, self.id, cfg, fds):
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
        deadline = time.monotonic() + self.limits.wall_seconds
        try:
            pre, self.pre = self.pre, b""
            ex = _drive(self.ch, pre + (b"" if inline is not None else encoded), self.limits, memory, loop, deadline)
        except BaseException:  # never reuse a worker whose exchange broke half-way
            self.retire(background=True)
            raise
        if ex.reply is not None and not ex.timed_out and ex.limit is None:
            hit = cg.hit() if cg is not None and ex.reply.get("ok") is not True else set()
            ok = ex.reply.get("ok") is True
            if not ok or self.calls >= self.max_calls:
                self.retire(background=True)
            elif cg is not None and self.mode == "warm":
                # nothing the call started may outlive it, even though the worker stays
                worker = self.zyg.wait_for(self.id, "started", 0)
                if worker is not None:
                    cg.kill_others(int(worker["pid"]))
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
        self.retire()
        raise _fail(self.spec.name, ex, info, hit, self.limits)

    def retire(self, background: bool = False) -> None:
        """Kill every process of this worker now; clean up (wait, unmount, free the slot) now or in background."""
        if self.dead:
            return
        self.dead = True
        if self.ch is not None:
            self.ch.close()
        zyg = getattr(self, "zyg", None)
        if zyg is not None:
            zyg.kill_call(self.id)
        if self.slot.cg is not None:
            self.slot.cg.kill_once()
        if background and not self.ex._closed:
            try:
                self.ex._cleaner.submit(self._finish)
                return
            except RuntimeError:  # cleaner shut down
                pass
        self._finish()

    def _finish(self) -> None:
        zyg = getattr(self, "zyg", None)
        slot: _Slot | None = self.slot
        if slot is not None and slot.cg is not None:
            if not slot.cg.kill_all():
                log.error("sandbox slot %d could not be emptied; it is retired", slot.index)
                slot = None
        elif zyg is not None:
            zyg.wait_for(self.id, "exited", _EXIT_WAIT)
        if zyg is not None:
            zyg.forget(self.id)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if slot is not None:
            self.ex._release_slot(slot)


class SandboxExecutor:
    """Runs untrusted plugins' hooks in exec'd, layered sandbox processes.

    Thread-safe and usable from several event loops at once. ``slots`` bounds
    concurrent sandboxed calls; when the host runs as root each slot runs as
    its own unprivileged uid ``uid_base + slot`` (default 61000+; override with
    ``KAREN_SANDBOX_UID_BASE``).
    """

    def __init__(self, slots: int | None = None, uid_base: int | None = None) -> None:
        self._nslots = slots or max(4, 2 * (os.cpu_count() or 1) + 2)
        if uid_base is None:
            uid_base = int(os.environ.get("KAREN_SANDBOX_UID_BASE", "61000"))
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
        self._cgroups = _layers.CgroupManager(f"karen-sandbox-{os.getpid()}-{secrets.token_hex(3)}")
        self._slots: queue.Queue[_Slot] = queue.Queue()
        for i in range(self._nslots):
            uid = uid_base + i if self._root else -1
            cg = self._cgroups.slot(i) if self._cgroups.active else None
            self._slots.put(_Slot(i, uid, uid, cg))
        self._tmpfs_ok, self._tmpfs_why = self._probe_tmpfs(uid_base)
        self._read_paths = _system_read_paths()
        self._required: list[str] = []
        self._layer_status: list[LayerStatus] = []
        self._warm: dict[Any, _Worker] = {}
        self._describe_cache: dict[Any, dict[str, Any]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(self._nslots, thread_name_prefix="karen-sandbox")
        self._cleaner = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="karen-sandbox-cleanup")
        self._reported = False
        self._ll_abi = _layers.landlock_abi()
        self._rulesets: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
        _LIVE.add(self)

    # -- setup ---------------------------------------------------------

    def _probe_tmpfs(self, uid: int) -> tuple[bool, str]:
        if not self._root:
            return False, "host is not root: work dir size is not capped (only RLIMIT_FSIZE per file)"
        d = os.path.join(self._base, "probe")
        os.mkdir(d)
        try:
            _layers.mount_tmpfs(d, 1, uid, uid)
            _layers.umount(d)
            return True, "a size- and inode-capped tmpfs per slot, a fresh dir in it per call"
        except OSError as exc:
            return False, f"cannot mount a tmpfs work dir ({exc}); work dir size is not capped"
        finally:
            os.rmdir(d)

    def _activate(self, zyg: _Zygote, sb: tuple[int, socket.socket], call_id: str, cfg: dict[str, Any],
                  fds: list[int]) -> bool:
        """Hand a call straight to a slot's standby child; ``False`` if it is gone."""
        pid, sock = sb
        ruleset = self._ruleset(cfg["read_paths"], cfg["write_paths"])
        aliases: list[str] = []
        alias_fds: list[int] = []
        uid = int(cfg["uid"])
        if uid > 0:
            for p in cfg["code_paths"] + ([cfg["spec"]["path"]] if cfg["spec"]["path"] else []):
                if p not in aliases and os.path.isdir(p) and not _reachable(p, uid, uid):
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
            for fd in alias_fds:
                os.close(fd)

    def _ruleset(self, read_paths: list[str], write_paths: list[str]) -> int | None:
        """A Landlock ruleset fd for these paths, built once in the host (never enforced on it)."""
        if self._ll_abi < 1:
            return None
        key = (tuple(read_paths), tuple(write_paths))
        with self._lock:
            fd = self._rulesets.get(key)
            if fd is None:
                if len(self._rulesets) >= 64:
                    os.close(self._rulesets.pop(next(iter(self._rulesets))))
                try:
                    fd, _ = _layers.landlock_ruleset(read_paths, write_paths, self._ll_abi)
                except OSError as exc:
                    log.error("cannot build a Landlock ruleset: %s", exc)
                    return None
                self._rulesets[key] = fd
            return fd

    def _slot_tmpfs(self, slot: _Slot, size_mb: int) -> None:
        """Mount (once) or resize the slot's tmpfs; it caps bytes and inodes of the work dir."""
        if not slot.tmpfs:
            path = os.path.join(self._base, f"slot{slot.index}")
            os.makedirs(path, exist_ok=True)
            _layers.mount_tmpfs(path, size_mb, 0, 0, mode=0o711)
            slot.tmpfs, slot.tmpfs_mb = path, size_mb
        elif slot.tmpfs_mb != size_mb:
            _layers.mount_tmpfs(slot.tmpfs, size_mb, 0, 0, mode=0o711, remount=True)
            slot.tmpfs_mb = size_mb

    def _zygote(self, replace: _Zygote | None = None) -> _Zygote:
        with self._lock:
            if self._closed:
                raise SandboxError("<sandbox>", "the sandbox executor is closed")
            z = self._zyg
            if z is not None and (z is replace or not z.alive or z.proc.poll() is not None):
                z.kill()
                z = self._zyg = None
            if z is None:
                uid = self._uid_base + self._nslots if self._root else -1
                probe = {"workdir": self._base, "uid": uid, "gid": uid, "read_paths": self._read_paths,
                         "write_paths": [self._base, "/dev/null"], "limits": Limits().model_dump(), "env": {}}
                z = self._zyg = _Zygote(probe)
                self._set_layers(z.layers)
                for slot in list(self._slots.queue):  # forked by the zygote in the background
                    z.prepare(slot)
            return z

    def _set_layers(self, child: dict[str, list[Any]]) -> None:
        statuses = statuses_from(child, self._cgroups, self._tmpfs_ok, self._tmpfs_why)
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
                    _layers.umount(slot.tmpfs)
        self._cgroups.remove()
        shutil.rmtree(self._base, ignore_errors=True)
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
