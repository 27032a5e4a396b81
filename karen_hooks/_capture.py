"""Per-call capture of what a trusted plugin prints.

``sys.stdout``/``sys.stderr`` are replaced once by proxies that write to the
current call's buffer (a ``ContextVar``) when one is set and to the real
stream otherwise. asyncio tasks and ``asyncio.to_thread`` copy the context,
so concurrent calls never see each other's output.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TextIO

_buffers: ContextVar[tuple[io.StringIO, io.StringIO] | None] = ContextVar("karen_capture", default=None)


class _ContextStream(io.TextIOBase):
    """A text stream that forwards to this context's capture buffer, or to ``real``."""

    def __init__(self, real: TextIO, index: int) -> None:
        self._real = real
        self._index = index

    def _target(self) -> TextIO:
        bufs = _buffers.get()
        return self._real if bufs is None else bufs[self._index]

    def write(self, s: str) -> int:
        return self._target().write(s)

    def flush(self) -> None:
        self._target().flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        # The real stream is not ours to close; and IOBase.__del__ calls close(),
        # which must not flush a stream its owner (e.g. pytest) already closed.
        pass

    def isatty(self) -> bool:
        return _buffers.get() is None and self._real.isatty()

    def fileno(self) -> int:
        return self._real.fileno()

    def __getattr__(self, name: str) -> Any:  # encoding, errors, buffer, ...
        return getattr(self._real, name)


def install() -> None:
    """Put the proxies in place (idempotent; safe if something else wrapped the streams)."""
    if not isinstance(sys.stdout, _ContextStream):
        sys.stdout = _ContextStream(sys.stdout, 0)
    if not isinstance(sys.stderr, _ContextStream):
        sys.stderr = _ContextStream(sys.stderr, 1)


def start() -> tuple[tuple[io.StringIO, io.StringIO], Token[Any]]:
    """Begin capturing this context's prints; pass the token to :func:`stop`."""
    install()  # every time: something (pytest, a host app) may have swapped the streams since
    bufs = (io.StringIO(), io.StringIO())
    return bufs, _buffers.set(bufs)


def stop(token: Token[Any]) -> None:
    _buffers.reset(token)


@contextmanager
def capture() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Capture this context's prints into two fresh buffers for the duration of the block."""
    bufs, token = start()
    try:
        yield bufs
    finally:
        stop(token)
