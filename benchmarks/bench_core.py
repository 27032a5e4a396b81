"""Per-call overhead of PluginManager.run_plugin on a trusted no-op plugin.

Baseline, measured in the same run: the same plugin's ``karen_run`` called
directly through its pluggy hook. Target: under 20 µs added per call.

    python benchmarks/bench_core.py [--batches 15] [--batch-size 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from karen_hooks import PluginManager, PluginRouter, hookimpl, load_settings
from karen_hooks._loader import register

USER = {"user_id": "bench", "roles": ["user"], "tenant_id": "bench"}


class NoOp:
    @hookimpl
    def karen_intent(self) -> list[dict[str, Any]]:
        return [
            {"name": "noop.run"},
            # the same no-op behind a JSON Schema, to show what jsonschema validation adds
            {"name": "noop.schema", "params": {"type": "object", "properties": {"x": {"type": "integer"}}}},
        ]

    @hookimpl
    def karen_run(self, params: Any) -> Any:
        return None


def per_call_us(batches: int, size: int, run_batch: Callable[[int], None]) -> list[float]:
    out = []
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        run_batch(size)
        out.append((time.perf_counter_ns() - t0) / size / 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=2000)
    args = ap.parse_args()

    pm = register("noop", NoOp())

    def direct(n: int) -> None:
        hook = pm.hook.karen_run
        for _ in range(n):
            hook(intent="noop.run", params={"x": 1}, ctx=None)

    settings = load_settings(environ={}, load_plugins=[], remember_runs=False)
    router = PluginRouter(settings)
    router.register_plugin(NoOp(), "noop")
    manager = PluginManager(router=router)
    loop = asyncio.new_event_loop()

    def via_manager(intent: str, params: dict[str, Any] | None) -> Callable[[int], None]:
        def batch(n: int) -> None:
            async def go() -> None:
                for _ in range(n):
                    await manager.run_plugin("noop", params, USER, intent=intent)

            loop.run_until_complete(go())

        return batch

    paths: list[tuple[str, Callable[[int], None]]] = [
        ("direct pluggy hook call (baseline)", direct),
        ("run_plugin, no params", via_manager("noop.run", None)),
        ("run_plugin, JSON-Schema params", via_manager("noop.schema", {"x": 1})),
    ]
    rows: list[tuple[str, list[float]]] = [(name, []) for name, _ in paths]
    # interleave the paths so drift on a noisy machine hits all alike
    for _ in range(args.batches):
        for (_, fn), (_, samples) in zip(paths, rows, strict=True):
            samples.extend(per_call_us(1, args.batch_size, fn))
    base = statistics.median(rows[0][1])
    print(f"{'path':<40} {'median µs/call':>15} {'p90 µs':>9} {'added µs':>9} {'ratio':>7}")
    for name, samples in rows:
        med = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"{name:<40} {med:>15.2f} {p90:>9.2f} {med - base:>9.2f} {med / base:>6.1f}x")
    added = statistics.median(rows[1][1]) - base  # the framework's own cost: no params to validate
    print(f"\ntarget: under 20 µs added per call -> {'met' if added < 20 else 'NOT met'} ({added:.2f} µs)")


if __name__ == "__main__":
    main()
