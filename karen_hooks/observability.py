"""Observability for operators: Prometheus exposure, the audit log, tracing and a health report.

Mount ``/metrics`` in the host app::

    from karen_hooks.observability import make_asgi_app, make_wsgi_app
    app.mount("/metrics", make_asgi_app())          # Starlette / FastAPI
    wsgi = DispatcherMiddleware(app, {"/metrics": make_wsgi_app()})  # Flask & co.

or start a standalone endpoint with :func:`serve_metrics` (``karen metrics serve``).
With ``PROMETHEUS_MULTIPROC_DIR`` set (several worker processes), the exposure
helpers aggregate every process's metrics. See docs/operations.md.
"""

from __future__ import annotations

import threading
from typing import Any, TextIO

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client import make_asgi_app as _make_asgi_app
from prometheus_client import make_wsgi_app as _make_wsgi_app

from ._audit import AUDIT_FIELDS, AUDIT_LOGGER, JsonFormatter, configure_audit_log
from ._metrics import OUTCOMES, Metrics, get_metrics, memory_op, multiprocess_dir, sandbox_event
from ._tracing import enable_hook_tracing, otel_available

__all__ = [
    "AUDIT_FIELDS",
    "AUDIT_LOGGER",
    "OUTCOMES",
    "JsonFormatter",
    "Metrics",
    "configure_audit_log",
    "enable_hook_tracing",
    "exposure_registry",
    "get_metrics",
    "health_report",
    "make_asgi_app",
    "make_wsgi_app",
    "mark_process_dead",
    "memory_op",
    "multiprocess_dir",
    "otel_available",
    "sandbox_event",
    "serve_forever",
    "serve_metrics",
]


def exposure_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """The registry to expose: ``registry``; else, in multiprocess mode, a fresh one aggregating
    every process's files (``MultiProcessCollector``); else the global registry."""
    if registry is not None:
        return registry
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    from prometheus_client import multiprocess

    fresh = CollectorRegistry()
    multiprocess.MultiProcessCollector(fresh, path=path)
    return fresh


def make_asgi_app(registry: CollectorRegistry | None = None) -> Any:
    """An ASGI app serving the metrics (mount it at ``/metrics``)."""
    return _make_asgi_app(exposure_registry(registry))


def make_wsgi_app(registry: CollectorRegistry | None = None) -> Any:
    """A WSGI app serving the metrics (mount it at ``/metrics``)."""
    return _make_wsgi_app(exposure_registry(registry))


def serve_metrics(port: int = 9464, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> Any:
    """Serve ``/metrics`` over HTTP in a daemon thread; returns ``(server, thread)``.

    Binds to ``127.0.0.1`` unless told otherwise: metrics name your plugins and
    intents, so exposing them beyond the host is the operator's decision.
    ``port=0`` picks a free port (``server.server_port``).
    """
    return start_http_server(port, addr=addr, registry=exposure_registry(registry))


def mark_process_dead(pid: int) -> None:
    """Multiprocess mode: drop a dead worker's live gauges (call from gunicorn's ``child_exit``)."""
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def health_report(router: Any) -> list[dict[str, str]]:
    """One row per problem for ``karen plugins check``: ``plugin``, ``distribution``, ``problem``.

    Covers every plugin skipped at discovery (import errors, invalid intents,
    manifests, API version, name clashes) and loaded plugins without intents.
    An empty list means every installed plugin loaded and validated.
    """
    rows = [
        {"plugin": p.plugin, "distribution": p.distribution or "", "problem": p.reason} for p in router.problems
    ]
    for info in router.list_plugins():
        if not info.intents:
            rows.append({"plugin": info.name, "distribution": info.distribution or "", "problem": "declares no intents"})
    return rows


def serve_forever(
    port: int = 9464,
    addr: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
    *,
    stop: threading.Event | None = None,
    announce: TextIO | None = None,
) -> None:
    """Serve ``/metrics`` until ``stop`` is set or the process is interrupted (``karen metrics serve``)."""
    httpd, thread = serve_metrics(port, addr, registry)
    if announce is not None:
        host = f"[{addr}]" if ":" in addr else addr
        print(f"serving metrics on http://{host}:{httpd.server_port}/metrics", file=announce, flush=True)
    try:
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def cmd_metrics_serve(args: Any) -> int:
    """``karen metrics serve [--port N] [--addr A]``: the CLI entry (loads the plugins, then serves)."""
    import sys

    from ._cli_common import make_router

    if multiprocess_dir() is None:
        print(
            "note: PROMETHEUS_MULTIPROC_DIR is not set, so only this process's metrics (plugin load errors) "
            "are served; set it for the host's worker processes and here to aggregate them",
            file=sys.stderr,
        )
    make_router(args)  # counts plugin load errors in this process
    serve_forever(args.port, args.addr, announce=sys.stdout)
    return 0
