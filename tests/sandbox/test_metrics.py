"""The sandbox reports process starts and kills to observability (scraped from a fresh registry)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from karen_hooks import Limits, PluginSettings, PluginTimeout
from karen_hooks._metrics import get_metrics
from karen_hooks.sandbox import SandboxExecutor

from .conftest import run


def _scrape(reg: CollectorRegistry) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            if s.name in ("karen_sandbox_starts_total", "karen_sandbox_kills_total", "karen_sandbox_limit_hits_total"):
                out[(s.name, s.labels["kind"])] = s.value
    return out


def test_starts_and_kills_are_counted():
    reg = CollectorRegistry()
    ex = SandboxExecutor(on_event=get_metrics(reg).sandbox_event)
    try:
        assert run(ex, "echo", n=1).result["params"]["n"] == 1
        with pytest.raises(PluginTimeout):
            run(ex, "sleep", limits=Limits(wall_seconds=0.5), seconds=60)
        warm = PluginSettings(mode="warm", warm_max_calls=100)
        run(ex, "echo", settings=warm, n=2)
        run(ex, "echo", settings=warm, n=3)  # served by the same warm worker: no new start
        ex.drop_warm()
        got = _scrape(reg)
    finally:
        ex.close()
    assert got[("karen_sandbox_starts_total", "zygote")] == 1
    assert got[("karen_sandbox_starts_total", "fork")] == 2
    assert got[("karen_sandbox_starts_total", "warm")] == 1
    assert got[("karen_sandbox_kills_total", "wall_time")] == 1
    assert got[("karen_sandbox_kills_total", "cleanup")] == 1  # the retired warm worker
    # a fork-per-call child that replied exits by itself: not a kill
    assert sum(v for (name, _), v in got.items() if name == "karen_sandbox_kills_total") == 2
    # limit hits are the manager's to count, never the executor's
    assert not any(name == "karen_sandbox_limit_hits_total" for name, _ in got)


def test_a_failing_callback_never_breaks_a_call(executor):
    def boom(event: str, kind: str) -> None:
        raise RuntimeError("metrics backend down")

    old, executor.on_event = executor.on_event, boom
    try:
        assert run(executor, "echo", n=4).result["params"]["n"] == 4
    finally:
        executor.on_event = old


def test_the_routers_default_sandbox_reports_to_its_registry(tmp_path):
    from karen_hooks import PluginRouter, Settings

    reg = CollectorRegistry()
    router = PluginRouter(Settings(plugin_dir=str(tmp_path), load_plugins=[]), metrics_registry=reg)
    ex = router.executor
    assert isinstance(ex, SandboxExecutor)
    try:
        run(ex, "echo", n=5)
    finally:
        ex.close()
    got = _scrape(reg)
    assert got[("karen_sandbox_starts_total", "fork")] == 1
