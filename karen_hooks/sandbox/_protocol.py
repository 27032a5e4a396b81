"""Wire format between the host and sandbox processes: length-prefixed JSON.

Every frame is a 4-byte big-endian length followed by that many bytes of
UTF-8 JSON (an object). Nothing is ever pickled. Readers enforce a size cap
before buffering a frame, so a hostile peer cannot make the host allocate
more than the cap.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from .._jsondata import MAX_DATA_DEPTH, nesting

_FRAME_DEPTH = MAX_DATA_DEPTH + 1

_HDR = struct.Struct(">I")
#: Hard ceiling for any frame, whatever the configured limits say.
MAX_FRAME = 256 << 20


class ProtocolError(Exception):
    """A peer sent something that is not a well-formed frame."""


class FrameTooLargeError(ProtocolError):
    def __init__(self, size: int, cap: int) -> None:
        self.size = size
        self.cap = cap
        super().__init__(f"frame of {size} bytes exceeds the {cap} byte cap")


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()


def encode(obj: dict[str, Any]) -> bytes:
    data = _ENCODER.encode(obj).encode("utf-8")
    if len(data) > MAX_FRAME:
        raise FrameTooLargeError(len(data), MAX_FRAME)
    return _HDR.pack(len(data)) + data


def decode(data: bytes) -> dict[str, Any]:
    try:
        obj = _DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("frame nests too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame is not a JSON object")
    return obj


def write_frame(fd: int, obj: dict[str, Any]) -> None:
    """Blocking write of one frame to a file descriptor."""
    view = memoryview(encode(obj))
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FrameBuffer:
    """Incremental decoder: feed bytes, pop complete frames; enforces ``cap`` and ``MAX_DATA_DEPTH``.

    The host's reader of a sandbox's frames: whatever the host later does with a reply
    (``json.dumps``, memory, UI checks, the application's own code) may recurse once per
    level, from a stack of any depth, so the depth is bounded here, where it comes in.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= _HDR.size:
            (size,) = _HDR.unpack_from(self._buf)
            if size > self.cap:
                raise FrameTooLargeError(size, self.cap)
            if len(self._buf) < _HDR.size + size:
                break
            payload = bytes(self._buf[_HDR.size : _HDR.size + size])
            del self._buf[: _HDR.size + size]
            frame = decode(payload)
            # nesting deeper than N takes at least 2N bytes: small frames need no walk
            # (+1: the frame's own object holds a result as deep as params may be)
            if size > 2 * _FRAME_DEPTH and nesting(frame, _FRAME_DEPTH) > _FRAME_DEPTH:
                raise ProtocolError(f"frame nests objects and arrays more than {MAX_DATA_DEPTH} deep")
            out.append(frame)
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


def read_frame(fd: int, cap: int = MAX_FRAME) -> dict[str, Any] | None:
    """Blocking read of one frame; ``None`` on a clean EOF before any byte."""
    hdr = _read_exact(fd, _HDR.size)
    if hdr is None:
        return None
    (size,) = _HDR.unpack(hdr)
    if size > cap:
        raise FrameTooLargeError(size, cap)
    payload = _read_exact(fd, size) if size else b""
    if payload is None:
        raise ProtocolError("EOF inside a frame")
    return decode(payload)


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise ProtocolError("EOF inside a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
