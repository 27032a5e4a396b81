"""Tracing: print every hook call (``KAREN_TRACE_PLUGINS=1``) and optional OpenTelemetry spans.

Hook tracing uses pluggy's hook-call monitoring on each trusted plugin's own
pluggy manager (like ``DATASETTE_TRACE_PLUGINS``) and writes to the real
stderr, never into the output captured for the plugin's call. Sandboxed
plugins' hooks run in another process; the host traces their calls from the
outside (see :func:`trace_line`).

OpenTelemetry: when ``opentelemetry-api`` is importable and the app has set a
tracer provider (the SDK's), each ``run_plugin`` is a ``karen.run_plugin``
span (attributes ``karen.plugin``, ``karen.intent``, ``karen.outcome``) made
current around the call; otherwise nothing happens, at the cost of one check.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import pluggy

from ._capture import _ContextStream

try:  # optional dependency
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _otel_trace
    _NO_PROVIDER: tuple[type, ...] = (_otel_trace.ProxyTracerProvider, _otel_trace.NoOpTracerProvider)
except ImportError:  # pragma: no cover - depends on the environment
    _otel_trace = None  # type: ignore[assignment]
    _otel_context = None  # type: ignore[assignment]
    _NO_PROVIDER = ()

_MAX_REPR = 200
_tracer: Any = None
_MISSING = object()


def _stderr() -> TextIO:
    """The real stderr, even inside a call whose output is being captured."""
    s = sys.stderr
    return s._real if isinstance(s, _ContextStream) else s  # noqa: SLF001


def trace_line(text: str, file: TextIO | None = None) -> None:
    out = file if file is not None else _stderr()
    try:
        out.write(f"karen trace: {text}\n")
        out.flush()
    except (OSError, ValueError):  # a closed stream must not fail the call
        pass


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= _MAX_REPR else r[: _MAX_REPR - 3] + "..."


def _describe_kwargs(kwargs: Mapping[str, Any], show_values: bool) -> str:
    if show_values:
        return ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
    # Params can hold secrets: only the intent's name is shown unless the operator opted in.
    return ", ".join(f"{k}={kwargs[k]!r}" if k == "intent" else k for k in kwargs)


def enable_hook_tracing(
    pm: pluggy.PluginManager, plugin: str, *, show_values: bool = False, file: TextIO | None = None
) -> Any:
    """Print every hook call of ``pm`` (a per-plugin manager); returns pluggy's undo callable.

    Values (params, results) are printed only with ``show_values`` (the
    ``audit_params`` opt-in), truncated to 200 characters.
    """
    starts: list[float] = []

    def before(hook_name: str, hook_impls: Any, kwargs: Mapping[str, Any]) -> None:
        starts.append(time.perf_counter())
        trace_line(f"{plugin}.{hook_name}({_describe_kwargs(kwargs, show_values)})", file)

    def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Mapping[str, Any]) -> None:
        ms = (time.perf_counter() - starts.pop()) * 1000.0 if starts else 0.0
        exc = outcome.exception
        if exc is not None:
            what = f"raised {type(exc).__name__}: {_short(str(exc))}"
        elif show_values:
            what = f"returned {_short(outcome.get_result())}"
        else:
            what = f"returned {type(outcome.get_result()).__name__}"
        trace_line(f"{plugin}.{hook_name} {what} in {ms:.3f} ms", file)

    return pm.add_hookcall_monitoring(before, after)


class Span:
    """An OpenTelemetry span made current for the duration of one call (``None`` without otel)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self.token = token

    def end(self, plugin: str | None, intent: str | None, outcome: str, exc: BaseException | None,
            include_values: bool = False) -> None:
        """End the span; an exception's message (and traceback) only with ``include_values``.

        Messages carry values: ``InvalidParams`` quotes the params it refused, a plugin's
        error whatever it put in it. Like the audit log, the span then keeps only the
        exception's type unless the operator opted in (``audit_params``).
        """
        span = self.span
        try:
            if span.is_recording():
                span.set_attribute("karen.plugin", plugin or "")
                span.set_attribute("karen.intent", intent or "")
                span.set_attribute("karen.outcome", outcome)
                if exc is not None:
                    if include_values:
                        span.record_exception(exc)
                    else:
                        span.add_event("exception", {"exception.type": type(exc).__name__})
                    span.set_status(_otel_trace.Status(_otel_trace.StatusCode.ERROR, type(exc).__name__))
        finally:
            _otel_context.detach(self.token)
            span.end()


def otel_available() -> bool:
    return _otel_trace is not None


def start_span(requested: str) -> Span | None:
    """Start the ``karen.run_plugin`` span and make it current; ``None`` when opentelemetry is absent."""
    if _otel_trace is None:
        return None
    # The global the API keeps (a plain read; get_tracer_provider() also reads os.environ every time).
    provider = getattr(_otel_trace, "_TRACER_PROVIDER", _MISSING)
    if provider is _MISSING:  # an API version without that global
        provider = _otel_trace.get_tracer_provider()
    if provider is None or isinstance(provider, _NO_PROVIDER):  # no SDK configured: spans would be dropped
        return None
    global _tracer
    if _tracer is None:
        _tracer = _otel_trace.get_tracer("karen_hooks")  # a proxy: follows a provider set later
    span = _tracer.start_span(
        "karen.run_plugin", attributes={"karen.requested": str(requested)[:128]}
    )
    token = _otel_context.attach(_otel_trace.set_span_in_context(span))
    return Span(span, token)
