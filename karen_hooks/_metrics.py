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

import threading
from time import perf_counter
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

UNKNOWN = "_unknown"
OTHER = "_other"
#: Cap on distinct values of each free-form label (sandbox kinds, memory backends/ops).
MAX_LABEL_VALUES = 64

#: Every value of the ``outcome`` label of ``karen_plugin_calls_total``.
OUTCOMES = ("ok", "error", "denied", "invalid", "timeout", "limit", "not_found")
SANDBOX_EVENTS = ("start", "kill", "limit")

#: Call-duration buckets in seconds: sub-millisecond in-host calls up to slow sandboxed ones.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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


class CallSeries:
    """Pre-bound children for one (plugin, intent): the hot path touches only these."""

    __slots__ = ("outcomes", "duration", "in_flight", "denials")

    def __init__(self, m: Metrics, plugin: str, intent: str) -> None:
        self.outcomes = {o: m.calls.labels(plugin, intent, o) for o in OUTCOMES}
        self.duration = m.duration.labels(plugin, intent)
        self.in_flight = m.in_flight.labels(plugin)
        self.denials = m.rbac_denials.labels(plugin, intent)


class Metrics:
    """Every karen-hooks collector, registered on one registry. Use :func:`get_metrics`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.calls = Counter(
            "karen_plugin_calls_total",
            "Plugin calls by plugin, intent and outcome (ok, error, denied, invalid, timeout, limit, not_found).",
            ["plugin", "intent", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "karen_plugin_call_duration_seconds",
            "Wall time of plugin calls, from the host's entry to its answer, including checks.",
            ["plugin", "intent"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "karen_plugin_calls_in_flight",
            "Plugin calls currently running.",
            ["plugin"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.rbac_denials = Counter(
            "karen_rbac_denials_total",
            "Calls refused because the caller's roles do not admit them to the intent.",
            ["plugin", "intent"],
            registry=r,
        )
        self.sandbox_starts = Counter(
            "karen_sandbox_starts_total",
            "Sandbox processes started, by kind (fork, warm, zygote, ...).",
            ["kind"],
            registry=r,
        )
        self.sandbox_kills = Counter(
            "karen_sandbox_kills_total",
            "Sandbox processes killed by the host, by reason.",
            ["kind"],
            registry=r,
        )
        self.sandbox_limit_hits = Counter(
            "karen_sandbox_limit_hits_total",
            "Sandboxed calls that hit a limit, by limit (wall_time, cpu, memory, ...).",
            ["kind"],
            registry=r,
        )
        self.load_errors = Counter(
            "karen_plugin_load_errors_total",
            "Plugins reported and skipped at discovery.",
            ["plugin"],
            registry=r,
        )
        self.memory_ops = Counter(
            "karen_memory_operations_total",
            "Memory backend operations by backend, operation and outcome (ok, error).",
            ["backend", "op", "outcome"],
            registry=r,
        )
        self._series: dict[tuple[str, str], CallSeries] = {}
        self._unknown = CallSeries(self, UNKNOWN, UNKNOWN)
        self._kinds = _Bounded()
        self._backends = _Bounded()
        self._ops = _Bounded()
        self._plugins = _Bounded(4096)
        self._sandbox = {"start": self.sandbox_starts, "kill": self.sandbox_kills, "limit": self.sandbox_limit_hits}

    # -- calls (called by the manager's observer) --------------------------

    def series(self, plugin: str, intent: str) -> CallSeries:
        """Children for a *loaded* plugin's intent. Callers pass only names the router resolved."""
        s = self._series.get((plugin, intent))
        if s is None:
            s = self._series.setdefault((plugin, intent), CallSeries(self, plugin, intent))
        return s

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


# -- the per-call observer the manager wraps around run_plugin -------------------


def classify(exc: BaseException) -> str:
    """The ``outcome`` label of a failed call."""
    # imported here: _errors is light, but keeping this module's import graph flat avoids cycles
    from ._errors import (
        AccessDenied,
        AmbiguousIntent,
        InvalidParams,
        InvalidUserContext,
        LimitExceeded,
        PluginNotFound,
        PluginTimeout,
    )

    if isinstance(exc, AccessDenied):
        return "denied"
    if isinstance(exc, (InvalidParams, InvalidUserContext, AmbiguousIntent)):
        return "invalid"
    if isinstance(exc, PluginTimeout):
        return "timeout"
    if isinstance(exc, LimitExceeded):
        return "limit"
    if isinstance(exc, PluginNotFound):
        return "not_found"
    return "error"


class CallObserver:
    """Counts, times, audits and (with otel) spans every ``run_plugin`` call of one manager.

    Labels come from names the router resolved; the resolution is cached per
    requested ``(name, intent)`` and re-checked against the router on each hit.
    """

    def __init__(self, manager: Any, metrics: Metrics) -> None:
        from . import _audit, _tracing

        self.manager = manager
        self.metrics = metrics
        self._audit = _audit.audit_call
        self._audit_log = _audit.audit_log
        self._start_span = _tracing.start_span if _tracing.otel_available() else None
        self._trace_line = _tracing.trace_line
        self._resolved: dict[tuple[str, str | None], tuple[Any, str, CallSeries, str]] = {}

    def _lookup(self, name: str, intent: str | None) -> tuple[Any, str | None, CallSeries, str | None]:
        """``(info, intent name, series, sandbox mode)``; info is ``None`` when the name resolves to nothing."""
        router = self.manager.router
        hit = self._resolved.get((name, intent))
        if hit is not None and router._plugins.get(hit[0].name) is hit[0]:
            return hit
        try:
            info, it = router.resolve(name, intent)
        except Exception:  # noqa: BLE001 - an unknown name is counted, the call itself raises the real error
            return None, None, self.metrics.unknown_series(), None
        settings = self.manager.settings
        mode = settings.plugin(info.name).mode if info.sandboxed else "in_host"
        hit = (info, it.name, self.metrics.series(info.name, it.name), mode)
        if len(self._resolved) < 4096:
            self._resolved[(name, intent)] = hit
        return hit

    async def observe(self, call: Any, name: str, params: Any, user_ctx: Any, intent: str | None) -> Any:
        """Await ``call`` (the run_plugin coroutine) and record what happened."""
        info, it_name, series, mode = self._lookup(name, intent)
        span = self._start_span(name) if self._start_span is not None else None
        trace = self.manager.settings.trace_plugins and info is not None and info.sandboxed
        if trace:
            self._trace_line(f"{info.name}.karen_run(intent={it_name!r}) [sandbox {mode}]")
        series.in_flight.inc()
        t0 = perf_counter()
        try:
            result = await call
        except BaseException as exc:
            dt = perf_counter() - t0
            series.in_flight.dec()
            self._failed(exc, dt, info, it_name, series, mode, name, params, user_ctx, span, trace)
            raise
        dt = perf_counter() - t0
        series.in_flight.dec()
        series.duration.observe(dt)
        series.outcomes["ok"].inc()
        if span is not None:
            span.end(info.name, it_name, "ok", None)
        if trace:
            self._trace_line(f"{info.name}.karen_run returned in {dt * 1000.0:.3f} ms [sandbox]")
        if self._audit_log.isEnabledFor(20):  # logging.INFO
            self._audit(
                user_ctx=user_ctx,
                plugin=info.name,
                intent=it_name,
                outcome="ok",
                duration=dt,
                sandbox_mode=mode,
                requested=name,
                params=params,
                result=getattr(result, "result", None),
                include_params=self.manager.settings.audit_params,
            )
        return result

    def _failed(
        self,
        exc: BaseException,
        dt: float,
        info: Any,
        it_name: str | None,
        series: CallSeries,
        mode: str | None,
        name: str,
        params: Any,
        user_ctx: Any,
        span: Any,
        trace: bool,
    ) -> None:
        outcome = classify(exc)
        series.duration.observe(dt)
        series.outcomes[outcome].inc()
        limit = getattr(exc, "limit", None)
        if outcome == "denied":
            series.denials.inc()
        elif limit is not None:
            self.metrics.sandbox_event("limit", limit)
        plugin = info.name if info is not None else None
        if span is not None:
            span.end(plugin, it_name, outcome, exc)
        if trace:
            self._trace_line(f"{plugin}.karen_run raised {type(exc).__name__} in {dt * 1000.0:.3f} ms [sandbox]")
        self._audit(
            user_ctx=user_ctx,
            plugin=plugin,
            intent=it_name,
            outcome=outcome,
            duration=dt,
            sandbox_mode=mode,
            requested=name,
            limit=limit,
            error=type(exc).__name__,
            params=params,
            include_params=self.manager.settings.audit_params,
        )
