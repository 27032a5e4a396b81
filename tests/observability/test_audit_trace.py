"""Audit records (JSON, opt-in params), hook tracing, OpenTelemetry, and registry caching."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from karen_hooks import AccessDenied, InvalidParams, InvalidUserContext, _metrics, _tracing, load_settings
from karen_hooks.observability import (
    JsonFormatter,
    configure_audit_log,
    get_metrics,
    health_report,
)

from ._helpers import USER, make_manager, write_plugins


@pytest.fixture
def audit_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    log = logging.getLogger("karen_hooks.audit")
    level = log.level
    handler = configure_audit_log(stream)
    try:
        yield stream
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_audit_record_per_call_without_params(tmp_path: Path, audit_stream: io.StringIO) -> None:
    write_plugins(tmp_path)
    mgr = make_manager(tmp_path, CollectorRegistry())

    async def calls() -> None:
        await mgr.run_plugin("typed", {"n": 4, "api_key": "s3cret"}, USER)
        with pytest.raises(AccessDenied):
            await mgr.run_plugin("secret", {"password": "hunter2"}, USER)
        with pytest.raises(InvalidUserContext):
            await mgr.run_plugin("okplug", {}, {"user_id": ""})

    asyncio.run(calls())
    text = audit_stream.getvalue()
    assert "s3cret" not in text and "hunter2" not in text
    ok, denied, invalid = _records(audit_stream)
    assert ok["logger"] == "karen_hooks.audit" and ok["level"] == "INFO"
    assert ok["time"].endswith("+00:00")
    assert {k: ok[k] for k in ("tenant", "user", "roles", "plugin", "intent", "outcome", "sandbox_mode", "limit")} == {
        "tenant": "t-1",
        "user": "u-1",
        "roles": ["user"],
        "plugin": "typed",
        "intent": "typed.run",
        "outcome": "ok",
        "sandbox_mode": "in_host",
        "limit": None,
    }
    assert 0 < ok["duration_seconds"] < 5
    assert "params" not in ok and "result" not in ok
    assert denied["outcome"] == "denied" and denied["error"] == "AccessDenied" and denied["plugin"] == "secret"
    assert invalid["outcome"] == "invalid" and invalid["plugin"] == "okplug" and invalid["user"] == ""


def test_params_and_results_only_when_operator_opts_in(tmp_path: Path, audit_stream: io.StringIO) -> None:
    write_plugins(tmp_path)
    mgr = make_manager(tmp_path, CollectorRegistry(), audit_params=True)
    asyncio.run(mgr.run_plugin("typed", {"n": 4}, USER))
    (rec,) = _records(audit_stream)
    assert rec["params"] == {"n": 4} and rec["result"] == 8


def test_audit_params_env_var() -> None:
    assert load_settings(environ={"KAREN_AUDIT_PARAMS": "1"}).audit_params is True
    assert load_settings(environ={}).audit_params is False


def test_json_formatter_renders_any_record() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    record.obj = object()
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "hello you" and doc["level"] == "WARNING" and "object" in doc["obj"]


def test_trace_plugins_prints_every_hook_call_to_real_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_plugins(tmp_path)
    mgr = make_manager(tmp_path, CollectorRegistry(), trace_plugins=True)
    run = asyncio.run(mgr.run_plugin("noisy", {"token": "abc"}, USER))
    err = capsys.readouterr().err
    assert "karen trace: noisy.karen_run(intent='noisy.run', params, ctx)" in err
    assert "karen trace: noisy.karen_run returned int in" in err
    assert "abc" not in err  # values only with audit_params
    assert run.stderr == "hi\n"  # the trace never lands in the plugin's captured output
    with pytest.raises(Exception, match="boom"):
        asyncio.run(mgr.run_plugin("crash", {}, USER))
    assert "karen trace: crash.karen_run raised RuntimeError: 'boom'" in capsys.readouterr().err


def test_no_trace_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_plugins(tmp_path)
    mgr = make_manager(tmp_path, CollectorRegistry())
    asyncio.run(mgr.run_plugin("okplug", {}, USER))
    assert "karen trace" not in capsys.readouterr().err


def test_metrics_are_created_once_per_registry_even_after_reimport() -> None:
    reg = CollectorRegistry()
    m = get_metrics(reg)
    assert get_metrics(reg) is m and get_metrics(m) is m
    assert get_metrics() is get_metrics(REGISTRY)
    reloaded = importlib.reload(_metrics)  # a second import of the module must not register twice
    try:
        assert reloaded.get_metrics(reg) is m
        reloaded.get_metrics()
    finally:
        importlib.reload(_metrics)


def test_record_functions_bound_their_labels() -> None:
    reg = CollectorRegistry()
    m = get_metrics(reg)
    m.sandbox_event("start", "fork")
    m.sandbox_event("kill", "wall_time")
    m.sandbox_event("nonsense", "x")  # unknown events are ignored
    m.memory_op("sqlite", "write", ok=True)
    m.memory_op("sqlite", "write", ok=False)
    for i in range(_metrics.MAX_LABEL_VALUES + 10):
        m.memory_op(f"backend-{i}", "read")
    assert reg.get_sample_value("karen_sandbox_starts_total", {"kind": "fork"}) == 1
    assert reg.get_sample_value("karen_sandbox_kills_total", {"kind": "wall_time"}) == 1
    assert reg.get_sample_value("karen_memory_operations_total", {"backend": "sqlite", "op": "write", "outcome": "error"}) == 1
    assert reg.get_sample_value("karen_memory_operations_total", {"backend": "_other", "op": "read", "outcome": "ok"}) == 11


def test_observe_false_records_nothing(tmp_path: Path, audit_stream: io.StringIO) -> None:
    write_plugins(tmp_path)
    reg = CollectorRegistry()
    mgr = make_manager(tmp_path, reg)
    off = type(mgr)(mgr.router, memory=False, observe=False)
    asyncio.run(off.run_plugin("okplug", {}, USER))
    assert reg.get_sample_value("karen_plugin_calls_total", {"plugin": "okplug", "intent": "ok.run", "outcome": "ok"}) is None
    assert audit_stream.getvalue() == ""


def test_health_report_lists_every_problem(tmp_path: Path) -> None:
    write_plugins(tmp_path)
    mgr = make_manager(tmp_path, CollectorRegistry())
    rows = health_report(mgr.router)
    assert [r["plugin"] for r in rows] == ["broken"]
    assert "not readable JSON" in rows[0]["problem"]


def test_opentelemetry_is_a_no_op_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tracing, "_otel_trace", None)
    assert _tracing.start_span("x") is None and not _tracing.otel_available()
    write_plugins(tmp_path)
    mgr = make_manager(tmp_path, CollectorRegistry())
    assert asyncio.run(mgr.run_plugin("okplug", {}, USER)).result == {"ok": True}


def test_opentelemetry_spans_with_the_sdk(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # global and set-once: only this test sets it
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another tracer provider was already set in this process")
    write_plugins(tmp_path)
    mgr = make_manager(tmp_path, CollectorRegistry())

    async def calls() -> None:
        await mgr.run_plugin("okplug", {}, USER)
        with pytest.raises(AccessDenied):
            await mgr.run_plugin("secret", {}, USER)
        with pytest.raises(InvalidParams):  # its message quotes the value: a token, say
            await mgr.run_plugin("typed", {"n": "sk-SECRET-TOKEN"}, USER)

    asyncio.run(calls())
    spans = [s for s in exporter.get_finished_spans() if s.name == "karen.run_plugin"]
    assert [(s.attributes["karen.plugin"], s.attributes["karen.outcome"]) for s in spans] == [
        ("okplug", "ok"),
        ("secret", "denied"),
        ("typed", "invalid"),
    ]
    assert spans[1].status.status_code == trace.StatusCode.ERROR
    # like the audit log, a span keeps an error's type, not its message, unless audit_params is on
    events = [e for s in spans for e in s.events]
    assert [e.attributes["exception.type"] for e in events] == ["AccessDenied", "InvalidParams"]
    assert "sk-SECRET-TOKEN" not in repr([(e.name, dict(e.attributes)) for e in events])


def test_memory_events_are_counted_by_backend(tmp_path: Path) -> None:
    from karen_hooks import PluginManager
    from karen_hooks.memory import InMemoryBackend, MemoryManager

    write_plugins(tmp_path)
    reg = CollectorRegistry()
    router = make_manager(tmp_path, reg).router
    memory = MemoryManager(backend=InMemoryBackend(), settings=router.settings)
    mgr = PluginManager(router, memory=memory, metrics_registry=reg)
    PluginManager(router, memory=memory, metrics_registry=reg)  # a second manager on the same registry: no double count
    asyncio.run(mgr.run_plugin("okplug", {}, USER))
    labels = {"backend": "inmemory", "op": "write", "outcome": "ok"}
    assert reg.get_sample_value("karen_memory_operations_total", labels) == 1
    get_metrics(reg).memory_event("inmemory", "read_failed")
    assert reg.get_sample_value("karen_memory_operations_total", {"backend": "inmemory", "op": "read", "outcome": "error"}) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_audit_records_name_the_forked_child() -> None:
    from karen_hooks._audit import AuditRecord

    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os._exit(0 if AuditRecord((), {}).process == os.getpid() else 1)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert AuditRecord((), {}).process == os.getpid()


@pytest.mark.parametrize("bad", [None, ["not", "hashable"], 3])
def test_observing_never_changes_the_error_of_a_bad_call(tmp_path: Path, audit_stream: io.StringIO, bad: Any) -> None:
    write_plugins(tmp_path)
    reg = CollectorRegistry()
    on = make_manager(tmp_path, reg)
    off = type(on)(on.router, memory=False, observe=False)
    errors = []
    for mgr in (off, on):
        with pytest.raises(Exception) as info:
            asyncio.run(mgr.run_plugin(bad, {}, USER))
        errors.append(type(info.value))
    assert errors[0] is errors[1]
    assert len(_records(audit_stream)) == 1
    assert sum(
        reg.get_sample_value("karen_plugin_calls_total", {"plugin": "_unknown", "intent": "_unknown", "outcome": o}) or 0
        for o in _metrics.OUTCOMES
    ) == 1


def test_audit_fields_of_a_parsed_caller_are_copied_and_long_roles_cut() -> None:
    from karen_hooks import UserContext
    from karen_hooks._audit import _user_fields

    user = UserContext.parse({"user_id": "u", "roles": ["user", "r" * 100], "tenant_id": "t"})
    tenant, uid, roles = _user_fields(user)
    assert (tenant, uid, roles) == ("t", "u", ["user", "r" * 64])
    short = UserContext.parse({"user_id": "u", "roles": ["user"]})
    roles = _user_fields(short)[2]
    assert roles == ["user"] and roles is not short.roles  # a record never shares the caller's list
