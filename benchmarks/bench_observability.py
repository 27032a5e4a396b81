"""Overhead of metrics + audit on a trusted no-op call, against the same call with them off, in one run.

Two managers share one router and one trusted in-process no-op plugin:
``off`` is ``PluginManager(observe=False)`` (no metrics, audit or spans);
``on`` counts into a fresh registry. Modes, interleaved round by round so
drift and machine load hit all of them alike:

- ``off``:            observe=False;
- ``metrics``:        on; the audit logger not enabled (the default when the
                      app configures no logging: one level check per call);
- ``metrics+audit``:  on; audit logger at INFO with a handler that drops
                      records (record construction measured, not I/O);
- ``+json``:          as above, formatted by ``JsonFormatter`` into memory.

"added" is the median over rounds of (mode - off) in the same round;
"added (mins)" compares the fastest batches, the least disturbed by other load.
Target: under 5 µs added by ``metrics+audit``.

    python benchmarks/bench_observability.py [--rounds 30] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import statistics
import time
from typing import Any

from prometheus_client import CollectorRegistry

from karen_hooks import PluginManager, PluginRouter, hookimpl, load_settings
from karen_hooks._tracing import otel_available
from karen_hooks.observability import JsonFormatter

USER = {"user_id": "bench", "roles": ["user"], "tenant_id": "bench"}


class NoOp:
    @hookimpl
    def karen_intent(self) -> list[dict[str, Any]]:
        return [{"name": "noop.run"}]

    @hookimpl
    def karen_run(self, params: Any) -> Any:
        return None


class _Drop(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=1000)
    args = ap.parse_args()

    settings = load_settings(environ={}, load_plugins=[], plugin_dir=None, remember_runs=False)
    router = PluginRouter(settings, metrics_registry=CollectorRegistry())
    router.register_plugin(NoOp(), "noop")
    off = PluginManager(router, memory=False, observe=False)
    on = PluginManager(router, memory=False, metrics_registry=CollectorRegistry())

    audit = logging.getLogger("karen_hooks.audit")
    audit.propagate = False
    drop = _Drop()
    json_handler = logging.StreamHandler(io.StringIO())
    json_handler.setFormatter(JsonFormatter())

    async def batch(mgr: PluginManager, n: int) -> float:
        run = mgr.run_plugin
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await run("noop", None, USER)
        return (time.perf_counter_ns() - t0) / n / 1000

    def audit_to(handler: logging.Handler | None) -> None:
        audit.handlers.clear()
        if handler is None:
            audit.setLevel(logging.WARNING)
        else:
            audit.setLevel(logging.INFO)
            audit.addHandler(handler)

    modes: list[tuple[str, PluginManager, logging.Handler | None]] = [
        ("off", off, None),
        ("metrics", on, None),
        ("metrics+audit", on, drop),
        ("+json", on, json_handler),
    ]

    async def bench() -> dict[str, list[float]]:
        for _, mgr, handler in modes:  # warm up: label series, resolution cache, imports
            audit_to(handler)
            await batch(mgr, 300)
        results: dict[str, list[float]] = {name: [] for name, _, _ in modes}
        for _ in range(args.rounds):
            for name, mgr, handler in modes:
                audit_to(handler)
                results[name].append(await batch(mgr, args.batch_size))
            json_handler.stream.seek(0)
            json_handler.stream.truncate()
        audit_to(None)
        return results

    results = asyncio.run(bench())
    base = results["off"]
    print(f"trusted no-op run_plugin: {args.rounds} rounds x {args.batch_size} calls per mode, interleaved")
    print(f"opentelemetry-api importable: {otel_available()} (no tracer provider set: spans skipped)")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'mode':<14} {'median µs/call':>15} {'min':>8} {'added µs':>9} {'added (mins)':>13} {'ratio':>6}")
    for name, vals in results.items():
        med = statistics.median(vals)
        added = statistics.median(v - b for v, b in zip(vals, base, strict=True))
        print(
            f"{name:<14} {med:>15.2f} {min(vals):>8.2f} {added:>9.2f} {min(vals) - min(base):>13.2f}"
            f" {med / statistics.median(base):>6.2f}"
        )
    added = statistics.median(v - b for v, b in zip(results["metrics+audit"], base, strict=True))
    print(f"metrics + audit added {added:.2f} µs per call (target < 5 µs): {'OK' if added < 5 else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
