"""One call's exchange with a sandbox process: the I/O loop, memory RPCs, and mapping failures to errors."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import selectors
import signal
import socket
import time
from dataclasses import asdict
from typing import Any

from .._config import Limits
from .._errors import InvalidResult, LimitExceeded, PluginError, PluginTimeout, SandboxError
from .._executor import MemoryBridge
from ._protocol import FrameBuffer, FrameTooLargeError, ProtocolError, encode

_LIMIT_NAMES = {"cpu", "memory", "processes", "open_files", "file_size", "stdout", "stderr", "reply_size"}
_MEMORY_METHODS = ("write", "read", "delete", "list")
_FORBIDDEN_KWARG_PARTS = ("tenant", "user", "backend", "scope", "credential")
_MAX_MEMORY_RPCS = 1000
_SIGNAMES = {int(s): s.name for s in signal.Signals}
# Below glibc's mmap threshold (128 KiB): a 1 MiB recv buffer was an mmap, an mremap to
# the reply's size and a munmap per call, each a TLB shootdown in the multi-threaded host.
# Frames are reassembled by FrameBuffer, so a large reply just takes a few more reads.
_RECV_CHUNK = 64 << 10


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
        self.memory_written = 0  # bytes of ctx.memory.write arguments taken so far


def _send_some(sock: socket.socket, outbuf: bytearray) -> None:
    """Send what the socket takes now; drop the rest if the peer is gone."""
    try:
        n = sock.send(outbuf)
        del outbuf[:n]
    except BlockingIOError:
        pass
    except OSError:
        outbuf.clear()


def _drive(
    ch: _Channel, request: bytes, limits: Limits, memory: MemoryBridge | None,
    loop: asyncio.AbstractEventLoop | None, deadline: float, plugin: str,
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
        _send_some(ch.sock, outbuf)
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
                        _send_some(ch.sock, outbuf)
                    if want_write and not outbuf:
                        sel.modify(ch.sock, selectors.EVENT_READ)
                        want_write = False
                    if not mask & selectors.EVENT_READ:
                        continue
                    try:
                        data = ch.sock.recv(_RECV_CHUNK)
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
                            # one read can hold a thousand calls: the deadline counts between them
                            if time.monotonic() >= deadline:
                                ex.timed_out = True
                                return ex
                            # the proxy reads each answer before its next call: unread answers
                            # beyond a reply's worth can only be a plugin filling the host's memory
                            if len(outbuf) > limits.reply_bytes:
                                ex.protocol_error = (f"it sent memory calls without reading their answers (more "
                                                     f"than {limits.reply_bytes} bytes of answers unread)")
                                return ex
                            rpcs += 1
                            answer = ((_over_write_budget(msg, ex, limits, plugin)
                                       or _memory_rpc(msg, memory, loop, deadline)) if rpcs <= _MAX_MEMORY_RPCS else
                                      {"ok": False, "error": f"more than {_MAX_MEMORY_RPCS} memory calls in one call"})
                            outbuf += _answer_frame(answer, limits)
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


def _answer_frame(answer: dict[str, Any], limits: Limits) -> bytes:
    """A memory answer as a frame; one larger than a reply may be is an error answer instead."""
    try:
        frame = encode(answer)
    except FrameTooLargeError as exc:
        size = exc.size
    else:
        if len(frame) <= limits.reply_bytes:
            return frame
        size = len(frame)
    return encode({"ok": False, "error": (f"memory answer of {size} bytes is over the reply_bytes cap "
                                          f"({limits.reply_bytes}); ask for fewer or smaller records")})


def _over_write_budget(msg: dict[str, Any], ex: _Exchange, limits: Limits, plugin: str) -> dict[str, Any] | None:
    """The refusal of a ``ctx.memory.write`` past this call's ``memory_write_bytes``, or ``None`` (counted).

    Memory records land in the host's database: without a budget, one call could
    write its RPC cap times the frame cap (gigabytes).
    """
    if msg.get("method") != "write":
        return None
    try:
        size = len(json.dumps([msg.get("args"), msg.get("kwargs")], separators=(",", ":")))
    except (TypeError, ValueError):
        return None  # refused by the write itself
    if ex.memory_written + size > limits.memory_write_bytes:
        return {"ok": False, "error": (
            f"memory write refused: this call has written {ex.memory_written} bytes of records and this one is "
            f"{size}; the limit is memory_write_bytes = {limits.memory_write_bytes} per call (if the plugin needs "
            f"more, raise plugins.{plugin}.limits.memory_write_bytes)")}
    ex.memory_written += size
    return None


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
