"""Multiprocess mode: several worker processes write to PROMETHEUS_MULTIPROC_DIR; one /metrics aggregates them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from karen_hooks.observability import make_wsgi_app, serve_metrics

from ._helpers import HANDLERS, samples, scrape, value, write_plugins

WORKERS = 3
CALLS = 5

WORKER = """
import asyncio, os, sys
from karen_hooks import AccessDenied, PluginManager, PluginRouter, load_settings

root = sys.argv[1]
names = [n for n in os.listdir(root)]
settings = load_settings(environ={}, plugin_dir=root, load_plugins=names, trusted_plugins=sys.argv[2].split(","))
mgr = PluginManager(PluginRouter(settings), memory=False)  # default registry, values in the multiproc dir
user = {"user_id": "w", "roles": ["user"], "tenant_id": "t"}

async def main():
    for _ in range(int(sys.argv[3])):
        await mgr.run_plugin("okplug", {}, user)
    try:
        await mgr.run_plugin("secret", {}, user)
    except AccessDenied:
        pass

asyncio.run(main())
print("done", os.getpid())
"""


def test_worker_processes_are_aggregated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_plugins(plugins)
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    env.pop("KAREN_CONFIG", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(plugins), ",".join(HANDLERS), str(CALLS)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    pids = set()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        pids.add(out.split()[-1])
    assert len(pids) == WORKERS
    assert any(f.name.startswith("counter_") for f in mp_dir.iterdir())

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mp_dir))
    httpd, thread = serve_metrics(0)  # no registry: aggregates the directory
    try:
        found = samples(scrape(httpd.server_port))
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    calls = "karen_plugin_calls_total"
    assert value(found, calls, plugin="okplug", intent="ok.run", outcome="ok") == WORKERS * CALLS
    assert value(found, calls, plugin="secret", intent="secret.run", outcome="denied") == WORKERS
    assert value(found, "karen_rbac_denials_total", plugin="secret", intent="secret.run") == WORKERS
    assert value(found, "karen_plugin_call_duration_seconds_count", plugin="okplug", intent="ok.run") == WORKERS * CALLS
    assert value(found, "karen_plugin_load_errors_total", plugin="broken") == WORKERS
    assert value(found, "karen_plugin_calls_in_flight", plugin="okplug") == 0
    assert callable(make_wsgi_app())


def test_karen_metrics_serve_aggregates_the_directory(tmp_path: Path) -> None:
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir), "KAREN_LOAD_PLUGINS": ""}
    env.pop("KAREN_CONFIG", None)
    # one worker's worth of calls, then the CLI serves them
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_plugins(plugins)
    subprocess.run(
        [sys.executable, "-c", WORKER, str(plugins), ",".join(HANDLERS), "2"], env=env, check=True, capture_output=True
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "karen_hooks.cli", "metrics", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving metrics on http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        found = samples(scrape(port))
        assert value(found, "karen_plugin_calls_total", plugin="okplug", intent="ok.run", outcome="ok") == 2
    finally:
        proc.terminate()
        proc.wait(10)
