"""Prometheus metrics for karen-hooks.

One :class:`Metrics` object owns every collector and is cached per
``CollectorRegistry`` (default: prometheus-client's global ``REGISTRY``), so
importing or constructing twice never raises "Duplicated timeseries".

Label cardinality is bounded: plugin and intent labels only ever carry names
the router loaded (anything else becomes ``"_unknown"``), outcomes come from a
fixed set, and free-form kinds (sandbox events, memory backends and ops) are
capped at :data:`MAX_LABEL_VALUES` distinct values each (then ``"_other"``).
User ids, tenants and params are never labels.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger("karen_hooks.metrics")

UNKNOWN = "_unknown"
OTHER = "_other"
#: Cap on distinct values of each free-form label (sandbox kinds, memory backends/ops).
MAX_LABEL_VALUES = 64

#: Every value of the ``outcome`` label of ``karen_plugin_calls_total``.
OUTCOMES = ("ok", "error", "denied", "invalid", "timeout", "limit", "not_found")
SANDBOX_EVENTS = ("start", "kill", "limit")
_MEMORY_OUTCOMES = {"ok": "ok", "failed": "error", "error": "error", "retry": "retry"}

#: Call-duration buckets in seconds: sub-millisecond in-host calls up to slow sandboxed ones.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when set (multiprocess mode), else ``None``."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


class _Bounded:
    """Maps free-form label values to themselves until ``cap`` distinct ones are seen, then to ``_other``."""

    __slots__ = ("_seen", "_cap", "_lock")

    def __init__(self, cap: int = MAX_LABEL_VALUES) -> None:
        self._seen: set[str] = set()
        self._cap = cap
        self._lock = threading.Lock()

    def __call__(self, value: Any) -> str:
        v = str(value)[:64] if value else UNKNOWN
        if v in self._seen:
            return v
        with self._lock:
            if v in self._seen:
                return v
            if len(self._seen) >= self._cap:
                return OTHER
            self._seen.add(v)
        return v


_CALLS = ("karen_plugin_calls_total", "Plugin calls by plugin, intent and outcome ({}).".format(", ".join(OUTCOMES)))
_DURATION = (
    "karen_plugin_call_duration_seconds",
    "Wall time of plugin calls, from the host's entry to its answer, including checks.",
)
_IN_FLIGHT = ("karen_plugin_calls_in_flight", "Plugin calls currently running.")


#: Fold a series' pending events into its totals once this many calls finished since the last fold.
_FOLD_AT = 256


class CallSeries:
    """The call metrics of one (plugin, intent), kept as plain numbers.

    The hot path is :meth:`start` and :meth:`finish`, run on every call: each
    is one ``deque.append``, which is atomic (thread-safe without a lock, and
    several times cheaper than taking one). Finished calls wait in one deque
    per outcome, holding their durations; every :data:`_FOLD_AT` calls and at
    every scrape they are folded into the totals under a lock, a batch at a
    time (sorted once, then one bisection per bucket bound instead of one per
    call), so memory stays bounded and a scrape sees every finished call.
    :class:`_CallCollector` turns them into ``karen_plugin_calls_total``,
    ``karen_plugin_call_duration_seconds`` and ``karen_plugin_calls_in_flight``.
    """

    __slots__ = ("plugin", "intent", "_lock", "_started", "_finished", "_pending", "started", "counts", "buckets",
                 "total_seconds")

    def __init__(self, plugin: str, intent: str) -> None:
        self.plugin = plugin
        self.intent = intent
        self._lock = threading.Lock()  # held only while folding
        self._started: deque[None] = deque()
        self._finished: dict[str, deque[float]] = {o: deque() for o in OUTCOMES}
        self._pending = self._finished["ok"]  # the one that fills up on a healthy host
        self.started = 0
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.total_seconds = 0.0

    def start(self) -> None:
        self._started.append(None)

    def finish(self, outcome: str, seconds: float) -> None:
        self._finished[outcome].append(seconds)
        if len(self._pending) >= _FOLD_AT or outcome != "ok":
            self._fold()  # failures are rare: folded at once, so no other deque needs a length check

    def _fold(self) -> None:
        with self._lock:
            # popleft exactly what was there: appends racing with the fold stay for the next one.
            # Finished calls first: every call counted as finished then has its start counted too
            # (its start was appended before its finish), so in-flight never goes negative.
            batch: list[float] = []
            for outcome, pending in self._finished.items():
                n = len(pending)
                if n:
                    popleft = pending.popleft
                    batch += [popleft() for _ in range(n)]
                    self.counts[outcome] += n
            if batch:
                batch.sort()
                below = 0
                for i, le in enumerate(DURATION_BUCKETS):  # bucket i counts le[i-1] < seconds <= le[i]
                    upto = bisect_right(batch, le)
                    self.buckets[i] += upto - below
                    below = upto
                self.buckets[-1] += len(batch) - below
                self.total_seconds += math.fsum(batch)
            started = self._started
            n = len(started)
            for _ in range(n):
                started.popleft()
            self.started += n

    def snapshot(self) -> tuple[int, dict[str, int], list[int], float]:
        """``(in flight, count per outcome, count per duration bucket, total seconds)`` of every finished call."""
        self._fold()
        with self._lock:
            return self.started - sum(self.counts.values()), dict(self.counts), list(self.buckets), self.total_seconds


class _CallCollector(Collector):
    """Exposes every :class:`CallSeries` of a :class:`Metrics` (a prometheus-client custom collector)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return [
            CounterMetricFamily(_CALLS[0], _CALLS[1], labels=["plugin", "intent", "outcome"]),
            HistogramMetricFamily(_DURATION[0], _DURATION[1], labels=["plugin", "intent"]),
            GaugeMetricFamily(_IN_FLIGHT[0], _IN_FLIGHT[1], labels=["plugin"]),
        ]

    def collect(self) -> Iterator[Any]:
        calls = CounterMetricFamily(_CALLS[0], _CALLS[1], labels=["plugin", "intent", "outcome"])
        duration = HistogramMetricFamily(_DURATION[0], _DURATION[1], labels=["plugin", "intent"])
        in_flight = GaugeMetricFamily(_IN_FLIGHT[0], _IN_FLIGHT[1], labels=["plugin"])
        per_plugin: dict[str, int] = {}
        bounds = [*(floatToGoString(b) for b in DURATION_BUCKETS), "+Inf"]
        for series in self._metrics.all_series():
            flying, counts, buckets, total = series.snapshot()
            per_plugin[series.plugin] = per_plugin.get(series.plugin, 0) + flying
            for outcome, n in counts.items():
                calls.add_metric([series.plugin, series.intent, outcome], n)
            cumulative, acc = [], 0
            for le, n in zip(bounds, buckets, strict=True):
                acc += n
                cumulative.append((le, acc))
            duration.add_metric([series.plugin, series.intent], cumulative, total)
        for plugin, n in per_plugin.items():
            in_flight.add_metric([plugin], n)
        yield calls
        yield duration
        yield in_flight


class _ClientSeries(CallSeries):
    """Multiprocess mode: the same interface on prometheus-client children, whose values live in
    ``PROMETHEUS_MULTIPROC_DIR`` files so one exposure can add up every worker process."""

    __slots__ = ("_outcomes", "_duration", "_gauge")

    def __init__(self, m: Metrics, plugin: str, intent: str) -> None:
        super().__init__(plugin, intent)
        assert m.calls is not None and m.duration is not None and m.in_flight is not None
        self._outcomes = {o: m.calls.labels(plugin, intent, o) for o in OUTCOMES}
        self._duration = m.duration.labels(plugin, intent)
        self._gauge = m.in_flight.labels(plugin)

    def start(self) -> None:
        self._gauge.inc()

    def finish(self, outcome: str, seconds: float) -> None:
        self._gauge.dec()
        self._outcomes[outcome].inc()
        self._duration.observe(seconds)


class Metrics:
    """Every karen-hooks collector, registered on one registry. Use :func:`get_metrics`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        #: multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set when this object is created)
        self.multiprocess = multiprocess_dir() is not None
        self.calls: Counter | None = None
        self.duration: Histogram | None = None
        self.in_flight: Gauge | None = None
        if self.multiprocess:
            self.calls = Counter(_CALLS[0], _CALLS[1], ["plugin", "intent", "outcome"], registry=r)
            self.duration = Histogram(_DURATION[0], _DURATION[1], ["plugin", "intent"], buckets=DURATION_BUCKETS, registry=r)
            self.in_flight = Gauge(_IN_FLIGHT[0], _IN_FLIGHT[1], ["plugin"], multiprocess_mode="livesum", registry=r)
        else:
            r.register(_CallCollector(self))
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, list(labels), registry=r)

        self.rbac_denials = counter(
            "karen_rbac_denials_total", "Calls refused because the caller's roles do not admit them to the intent.",
            "plugin", "intent",
        )
        self.sandbox_starts = counter(
            "karen_sandbox_starts_total", "Sandbox processes started, by kind (fork, warm, zygote, ...).", "kind"
        )
        self.sandbox_kills = counter("karen_sandbox_kills_total", "Sandbox processes killed by the host, by reason.", "kind")
        self.sandbox_limit_hits = counter(
            "karen_sandbox_limit_hits_total", "Sandboxed calls that hit a limit, by limit (wall_time, cpu, memory, ...).",
            "kind",
        )
        self.load_errors = counter("karen_plugin_load_errors_total", "Plugins reported and skipped at discovery.", "plugin")
        self.memory_ops = counter(
            "karen_memory_operations_total", "Memory operations by backend, operation and outcome (ok, error, retry).",
            "backend", "op", "outcome",
        )
        self._series: dict[tuple[str, str], CallSeries] = {}
        self._unknown = self._new_series(UNKNOWN, UNKNOWN)
        self._kinds = _Bounded()
        self._backends = _Bounded()
        self._ops = _Bounded()
        self._plugins = _Bounded(4096)
        self._sandbox = {"start": self.sandbox_starts, "kill": self.sandbox_kills, "limit": self.sandbox_limit_hits}

    # -- calls (called by the manager's observer) --------------------------

    def _new_series(self, plugin: str, intent: str) -> CallSeries:
        return _ClientSeries(self, plugin, intent) if self.multiprocess else CallSeries(plugin, intent)

    def series(self, plugin: str, intent: str) -> CallSeries:
        """The series of a *loaded* plugin's intent. Callers pass only names the router resolved."""
        s = self._series.get((plugin, intent))
        if s is None:
            with _lock:
                s = self._series.get((plugin, intent))
                if s is None:
                    s = self._series[(plugin, intent)] = self._new_series(plugin, intent)
        return s

    def all_series(self) -> list[CallSeries]:
        with _lock:
            return [self._unknown, *self._series.values()]

    def unknown_series(self) -> CallSeries:
        """Children for calls naming no loaded plugin or intent."""
        return self._unknown

    # -- small record functions for other modules ----------------------------

    def sandbox_event(self, event: str, kind: str) -> None:
        """Count a sandbox ``event`` (``"start"``, ``"kill"`` or ``"limit"``) of ``kind``.

        ``kind`` is the sandbox mode for starts, the reason for kills, the
        limit name (``wall_time``, ``cpu``, ``memory``...) for limit hits.
        """
        counter = self._sandbox.get(event)
        if counter is not None:
            counter.labels(self._kinds(kind)).inc()

    def memory_op(self, backend: str, op: str, ok: bool = True) -> None:
        """Count one memory operation (``op``: write, read, delete, ...) on ``backend``."""
        self.memory_ops.labels(self._backends(backend), self._ops(op), "ok" if ok else "error").inc()

    def memory_event(self, backend: str, event: str) -> None:
        """Count a :class:`~karen_hooks.memory.MemoryManager` event (``write_ok``, ``write_failed``,
        ``write_retry``, ``read_failed``, ...) as ``op`` and ``outcome`` (ok, error, retry, ...)."""
        op, _, status = event.rpartition("_")
        if not op:
            op, status = event, "ok"
        outcome = _MEMORY_OUTCOMES.get(status, status)
        self.memory_ops.labels(self._backends(backend), self._ops(op), self._kinds(outcome)).inc()

    def watch_memory(self, memory: Any) -> None:
        """Count every event of a MemoryManager (once per manager and registry)."""
        watched = memory.__dict__.setdefault("_karen_metrics_watched", set())
        if id(self) in watched or not hasattr(memory, "add_listener"):
            return
        watched.add(id(self))
        name = type(getattr(memory, "backend", None)).__name__.lower().removesuffix("backend") or "unknown"
        memory.add_listener(lambda event, labels: self.memory_event(name, event))

    def load_error(self, plugin: str) -> None:
        """Count a plugin reported and skipped at discovery."""
        self.load_errors.labels(self._plugins(plugin)).inc()


_lock = threading.Lock()
#: The Metrics of a registry is stored on the registry itself, so it survives a reload of this module.
_ATTR = "_karen_hooks_metrics"


def get_metrics(registry: CollectorRegistry | Metrics | None = None) -> Metrics:
    """The :class:`Metrics` of ``registry`` (default: the global one), created once per registry."""
    if isinstance(registry, Metrics):
        return registry
    reg = REGISTRY if registry is None else registry
    m = getattr(reg, _ATTR, None)
    if isinstance(m, Metrics):
        return m
    with _lock:
        m = getattr(reg, _ATTR, None)
        # Compared by class name, not identity: a reloaded copy of this module
        # must reuse the collectors already registered, not register them twice.
        if m is None or type(m).__name__ != "Metrics":
            m = Metrics(reg)
            setattr(reg, _ATTR, m)
    return m


def sandbox_event(event: str, kind: str, registry: CollectorRegistry | None = None) -> None:
    """Module-level shortcut of :meth:`Metrics.sandbox_event` (default registry)."""
    get_metrics(registry).sandbox_event(event, kind)


def memory_op(backend: str, op: str, ok: bool = True, registry: CollectorRegistry | None = None) -> None:
    """Module-level shortcut of :meth:`Metrics.memory_op` (default registry)."""
    get_metrics(registry).memory_op(backend, op, ok)
