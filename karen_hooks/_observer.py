"""The per-call observer the manager wraps around ``run_plugin``: metrics, audit record, span, trace line."""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from ._errors import (
    AccessDenied,
    AmbiguousIntent,
    InvalidParams,
    InvalidUserContext,
    LimitExceeded,
    PluginNotFound,
    PluginTimeout,
)
from ._metrics import CallSeries, Metrics

log = logging.getLogger("karen_hooks.metrics")


def classify(exc: BaseException) -> str:
    """The ``outcome`` label of a failed call."""
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
        try:
            hit = self._resolved.get((name, intent))
        except TypeError:  # an unhashable name: the call itself will say what is wrong
            return None, None, self.metrics.unknown_series(), None
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
        try:
            info, it_name, series, mode = self._lookup(name, intent)
            span = self._start_span(name) if self._start_span is not None else None
            trace = self.manager.settings.trace_plugins and info is not None and info.sandboxed
            if trace:
                self._trace_line(f"{info.name}.karen_run(intent={it_name!r}) [sandbox {mode}]")
            series.start()
        except Exception:  # noqa: BLE001 - observing must never stop a call
            log.exception("karen-hooks could not observe this call; it runs unobserved")
            return await call
        t0 = perf_counter()
        try:
            result = await call
        except BaseException as exc:
            dt = perf_counter() - t0
            try:
                self._failed(exc, dt, info, it_name, series, mode, name, params, user_ctx, span, trace)
            except Exception:  # noqa: BLE001 - never replace the call's own exception
                log.exception("karen-hooks could not record a failed call")
            raise
        dt = perf_counter() - t0
        series.finish("ok", dt)
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
        series.finish(outcome, dt)
        limit = getattr(exc, "limit", None)
        if outcome == "denied":
            self.metrics.rbac_denials.labels(series.plugin, series.intent).inc()
        elif limit is not None:
            self.metrics.sandbox_event("limit", limit)
        plugin = info.name if info is not None else None
        if span is not None:
            span.end(plugin, it_name, outcome, exc)
        if trace:
            self._trace_line(f"{plugin}.karen_run raised {type(exc).__name__} in {dt * 1000.0:.3f} ms [sandbox]")
        self._audit(  # errors here would replace the call's own exception: the inputs are guarded
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
