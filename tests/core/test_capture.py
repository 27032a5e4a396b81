"""The stdout/stderr proxies behind per-call capture."""

from __future__ import annotations

import gc
import io

from karen_hooks._capture import _ContextStream, start, stop


def test_proxy_never_closes_or_flushes_a_stream_it_does_not_own() -> None:
    real = io.StringIO()
    proxy = _ContextStream(real, 0)
    real.close()  # e.g. pytest closed its capture file after the test
    proxy.close()
    del proxy
    gc.collect()  # IOBase.__del__ -> close(): must not raise "I/O operation on closed file"


def test_capture_buffers_only_while_started() -> None:
    real = io.StringIO()
    proxy = _ContextStream(real, 0)
    (out, _err), token = start()
    proxy.write("captured")
    stop(token)
    proxy.write("through")
    assert out.getvalue() == "captured" and real.getvalue() == "through"
