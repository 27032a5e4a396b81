"""Fixtures for the sandbox tests: one real executor per session, hostile plugins on disk.

Test plugins live in ``tests/sandbox/plugins/``: ``hostile/`` is an old-format
directory plugin (``handler.py`` with ``run(params, ctx)``) dispatching on
``params["action"]``; ``ep/hostile_ep.py`` is a pluggy plugin run as an entry
point that is *not installed*: its spec is ``kind="entry_point",
target="hostile_ep", code_paths=(plugins/ep,)`` and the sandbox puts the code
path on its ``sys.path``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from karen_hooks import Limits, PluginSettings, PluginSpec
from karen_hooks.sandbox._layers import proc_stat

PLUGINS = Path(__file__).parent / "plugins"
HOSTILE = PluginSpec(name="hostile", kind="directory", target="handler.py", path=str(PLUGINS / "hostile"),
                     code_paths=(str(PLUGINS / "hostile"),))
EP = PluginSpec(name="hostile-ep", kind="entry_point", target="hostile_ep", code_paths=(str(PLUGINS / "ep"),))
CTX = {"user_id": "u1", "tenant_id": "t1", "roles": ["user"], "intent": "x", "plugin": "hostile"}

if not sys.platform.startswith("linux"):  # pragma: no cover
    pytest.skip("the process sandbox is Linux-only", allow_module_level=True)


@pytest.fixture(scope="session")
def executor():
    from karen_hooks.sandbox import SandboxExecutor

    ex = SandboxExecutor()
    try:
        yield ex
    finally:
        ex.close()


@pytest.fixture(scope="session")
def layers(executor) -> dict[str, Any]:
    return {s.name: s for s in executor.layers()}


def need(layers: dict[str, Any], *names: str) -> None:
    """Skip (never pass) when a layer this test proves is missing here."""
    for n in names:
        s = layers[n]
        if not s.active:
            pytest.skip(f"sandbox layer {n} is not available on this machine: {s.detail}")


def run(executor, action: str, limits: Limits | None = None, settings: PluginSettings | None = None,
        memory: Any = None, spec: PluginSpec = HOSTILE, **params: Any):
    kwargs = {"intent": "x", "params": {"action": action, **params}, "ctx": CTX}
    return asyncio.run(executor.call(spec, "karen_run", kwargs, settings or PluginSettings(), limits or Limits(),
                                     memory=memory))


def still_serves(executor) -> None:
    """The host keeps serving: a normal call right after succeeds with its full output."""
    out = run(executor, "echo", n=1)
    assert out.result["params"] == {"action": "echo", "n": 1}
    assert out.stdout == "to stdout\n"


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"  # a zombie has exited


HOST_PID = os.getpid()


def localhost_listeners(udp_timeout: float) -> tuple[socket.socket, socket.socket]:
    """A listening TCP socket (0.2 s accept timeout) and a bound UDP socket on 127.0.0.1: what a
    plugin must not reach. ``udp_timeout`` 0 makes the UDP socket non-blocking."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(5)
    tcp.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(udp_timeout)
    return tcp, udp
