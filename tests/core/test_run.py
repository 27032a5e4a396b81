"""PluginManager.run_plugin against real installed plugins: checks before code, capture, typed errors."""

from __future__ import annotations

import asyncio
import sys

import pytest

from karen_hooks import (
    AccessDenied,
    AmbiguousIntent,
    InvalidParams,
    InvalidResult,
    InvalidUserContext,
    PluginError,
    PluginManager,
    PluginNotFound,
    PluginRouter,
    UserContext,
)

from .conftest import USER, settings

TRUSTED = ["hello", "minimal", "badresult"]


@pytest.fixture
def manager(installed, recorder) -> PluginManager:
    s = settings(load_plugins=["hello", "minimal", "badresult", "marker"], trusted_plugins=TRUSTED)
    return PluginManager(router=PluginRouter(s, executor=recorder))


def run(manager: PluginManager, *args, **kw):
    return asyncio.run(manager.run_plugin(*args, **kw))


def hello_calls() -> list[str]:
    return sys.modules["karen_test_hello"].CALLS


def test_run_returns_result_and_captured_output(manager) -> None:
    result, out, err = run(manager, "hello", {"name": "ann", "times": 2}, USER, intent="hello.greet")
    assert result == {"greeting": "hello ann"}
    assert out == "greeting ann #0\ngreeting ann #1\n"
    assert err == "err ann\nerr ann\n"


def test_bare_intent_name_resolves(manager) -> None:
    result, _, _ = run(manager, "minimal.double", {"n": 21}, USER)
    assert result == {"double": 42, "label": "x"}


def test_plugin_with_several_intents_needs_intent(manager) -> None:
    with pytest.raises(AmbiguousIntent, match="pass intent="):
        run(manager, "hello", {"name": "x"}, USER)


def test_unknown_plugin_and_intent(manager) -> None:
    with pytest.raises(PluginNotFound):
        run(manager, "nope", {}, USER)
    with pytest.raises(PluginNotFound, match="has no intent 'hello.nope'"):
        run(manager, "hello", {}, USER, intent="hello.nope")


def test_concurrent_calls_keep_their_own_output(manager) -> None:
    async def many():
        return await asyncio.gather(
            *(manager.run_plugin("hello", {"name": f"n{i}", "times": 5}, USER, intent="hello.greet") for i in range(20))
        )

    for i, (result, out, err) in enumerate(asyncio.run(many())):
        assert out == "".join(f"greeting n{i} #{k}\n" for k in range(5))
        assert err == f"err n{i}\n" * 5
        assert result == {"greeting": f"hello n{i}"}


@pytest.mark.parametrize(
    "user_ctx, problem",
    [
        ({"roles": ["user"]}, "user_id: Field required"),
        ({"user_id": 123, "roles": ["user"]}, "user_id: Input should be a valid string"),
        ({"user_id": "u", "roles": "admin"}, "roles: Input should be a valid list"),
        ({"user_id": "u", "roles": ["user"], "tenant_id": ["a"]}, "tenant_id"),
        ({"user_id": "", "roles": []}, "user_id"),
        (None, "user_ctx must be a dict"),
        # a UserContext the application built itself is checked the same way: a dict of roles granted its keys
        (UserContext("u", {"admin": False}), "roles: Input should be a valid list"),  # type: ignore[arg-type]
        (UserContext("u", "admin"), "roles: Input should be a valid list"),  # type: ignore[arg-type]
        (UserContext("u", None), "roles: Input should be a valid list"),  # type: ignore[arg-type]
    ],
)
def test_user_ctx_is_validated_before_anything_runs(manager, user_ctx, problem) -> None:
    before = list(hello_calls()) if "karen_test_hello" in sys.modules else []
    with pytest.raises(InvalidUserContext, match=problem):
        run(manager, "hello", {"name": "x"}, user_ctx, intent="hello.greet")
    assert hello_calls() == before


def test_json_schema_params_errors_name_plugin_intent_field(manager) -> None:
    with pytest.raises(InvalidParams) as exc:
        run(manager, "hello", {"name": "x", "times": 0}, USER, intent="hello.greet")
    assert exc.value.plugin == "hello" and exc.value.intent == "hello.greet"
    assert exc.value.errors[0]["field"] == "times" and "minimum" in exc.value.errors[0]["problem"]
    assert "plugin 'hello' intent 'hello.greet': times:" in str(exc.value)
    with pytest.raises(InvalidParams, match="name: 'name' is a required property"):
        run(manager, "hello", {}, USER, intent="hello.greet")
    assert "hello.greet" not in hello_calls()


def test_pydantic_params_errors(manager) -> None:
    with pytest.raises(InvalidParams, match="plugin 'minimal' intent 'minimal.double': n: Input should be a valid integer"):
        run(manager, "minimal", {"n": "lots"}, USER)
    assert sys.modules["karen_test_minimal"].Plugin.calls == 0


def test_rbac_denies_before_plugin_code_runs(manager) -> None:
    with pytest.raises(AccessDenied, match="needs one of the roles \\['admin', 'auditor'\\]"):
        run(manager, "hello", {}, {"user_id": "u", "roles": ["user"]}, intent="hello.whoami")
    assert "hello.whoami" not in hello_calls()


def test_forged_role_claims_in_params_do_not_help(manager) -> None:
    with pytest.raises(AccessDenied):
        run(manager, "hello", {"roles": ["admin"]}, {"user_id": "u", "roles": ["user"], "admin": True}, intent="hello.whoami")


def test_role_inheritance_default_admin_includes_user(manager) -> None:
    result, _, _ = run(manager, "minimal", {"n": 1}, {"user_id": "root", "roles": ["admin"]})
    assert result["double"] == 2


def test_operator_overrides_roles_and_inheritance(installed, recorder) -> None:
    s = settings(
        load_plugins=["hello", "minimal"],
        trusted_plugins=["hello", "minimal"],
        role_inheritance={"ops": ["auditor"]},
        plugins={"minimal": {"required_roles": ["finance"]}, "hello": {"intent_roles": {"hello.greet": ["vip"]}}},
    )
    m = PluginManager(router=PluginRouter(s, executor=recorder))
    with pytest.raises(AccessDenied):
        run(m, "minimal", {"n": 1}, {"user_id": "u", "roles": ["user"]})
    with pytest.raises(AccessDenied):  # the default admin->user inheritance was replaced
        run(m, "minimal", {"n": 1}, {"user_id": "u", "roles": ["admin"]})
    assert run(m, "minimal", {"n": 1}, {"user_id": "u", "roles": ["finance"]})[0]["double"] == 2
    with pytest.raises(AccessDenied):
        run(m, "hello", {"name": "a"}, {"user_id": "u", "roles": ["user"]}, intent="hello.greet")
    assert run(m, "hello", {}, {"user_id": "u", "roles": ["ops"], "tenant_id": "t"}, intent="hello.whoami")[0] == {
        "user_id": "u", "tenant_id": "t", "roles": ["ops"], "intent": "hello.whoami"}


def test_plugin_exception_becomes_plugin_error_with_traceback(manager) -> None:
    with pytest.raises(PluginError) as exc:
        run(manager, "hello", {}, USER, intent="hello.fail")
    assert exc.value.plugin == "hello"
    assert "ZeroDivisionError: hello.fail was asked to fail" in str(exc.value)
    assert "karen_test_hello/__init__.py" in exc.value.plugin_traceback


def test_non_json_result_is_refused(manager) -> None:
    with pytest.raises(InvalidResult, match="plugin 'badresult'.*not JSON-serialisable"):
        run(manager, "badresult", {}, USER)


def test_calling_one_plugin_never_runs_another(manager) -> None:
    run(manager, "minimal", {"n": 2}, USER)
    assert hello_calls() == []


def test_untrusted_plugin_runs_only_through_the_executor(manager, recorder) -> None:
    result, out, _ = run(manager, "marker", {}, USER)
    assert result == {"sandboxed": "marker"} and out == "out"
    spec, hook, kwargs = recorder.calls[-1]
    assert (spec.name, hook) == ("marker", "karen_run")
    assert kwargs["ctx"] == {"user_id": "u1", "tenant_id": "acme", "roles": ["user"], "intent": "marker.x", "plugin": "marker"}
    assert "karen_test_marker" not in sys.modules


def test_json_schema_defaults_are_filled_like_the_model_would(installed, recorder) -> None:
    """Untrusted plugins' params are checked against their JSON Schema; defaults must not be lost."""
    schema = {"type": "object", "properties": {"format": {"type": "string", "default": "iso"},
                                               "tz": {"type": "string", "default": "UTC"}}}
    forged = type(recorder)({"marker": [{"name": "marker.ping", "params": schema}]})
    m = PluginManager(router=PluginRouter(settings(load_plugins=["marker"]), executor=forged))
    run(m, "marker", {"tz": "Asia/Tokyo"}, USER)
    assert forged.calls[-1][2]["params"] == {"tz": "Asia/Tokyo", "format": "iso"}
    assert schema["properties"]["format"] == {"type": "string", "default": "iso"}


def test_register_plugin_module_and_object(recorder) -> None:
    import karen_plugin_time_query as tq

    router = PluginRouter(settings(load_plugins=[]), executor=recorder)
    info = router.register_plugin(tq, "clock")
    assert info.trusted and not info.sandboxed and info.spec.target == "karen_plugin_time_query"
    result, _, _ = asyncio.run(PluginManager(router=router).run_plugin("clock", {"format": "unix"}, USER))
    assert isinstance(result["time"], int)
    with pytest.raises(ValueError, match="also claimed by plugin 'clock'; neither is loaded"):
        router.register_plugin(tq, "clock2")
    assert "clock" not in [p.name for p in router.list_plugins()]  # the earlier claimant is refused too


def _nested(depth: int) -> dict:
    out: dict = {"type": "object"}
    for _ in range(depth):
        out = {"type": "object", "properties": {"a": out}}
    return out


def test_a_params_schema_nested_too_deep_is_refused_when_the_intent_is_made() -> None:
    """A plugin's schema is checked by the host's recursive validators: depth is bounded up front."""
    from karen_hooks import Intent
    from karen_hooks._models import MAX_SCHEMA_DEPTH

    Intent(name="ok", params=_nested(MAX_SCHEMA_DEPTH // 2 - 1))  # 2 containers per level
    with pytest.raises(ValueError, match=f"nests objects and arrays more than {MAX_SCHEMA_DEPTH} deep"):
        Intent(name="deep", params=_nested(400))


def test_params_nested_thousands_deep_are_invalid_params_not_a_crash() -> None:
    """A recursive schema ($ref) follows the params as deep as they go: the host refuses, typed."""
    from karen_hooks import Intent
    from karen_hooks._params import validate_params

    it = Intent(name="tree", params={"type": "object", "additionalProperties": {"$ref": "#"}})
    params: dict = {}
    cur = params
    for _ in range(5000):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(InvalidParams, match="nest objects and arrays more than 100 deep"):
        validate_params("p", it, params)
    assert validate_params("p", it, {"a": {"b": {}}}) == {"a": {"b": {}}}


def test_a_trusted_result_nested_past_the_recursion_limit_is_invalid_result() -> None:
    from karen_hooks._manager import ensure_json

    x: object = 1
    for _ in range(100_000):  # past the recursion limit of every Python here (3.12+ raised it in C code)
        x = [x]
    with pytest.raises(InvalidResult, match="nests too deeply"):
        ensure_json("deep", x)


def test_a_params_schema_cannot_make_the_host_fetch_a_ref(tmp_path) -> None:
    """jsonschema fetches a remote $ref by default: a plugin's schema could read host files or call URLs."""
    import http.server
    import threading

    from karen_hooks import Intent
    from karen_hooks._params import validate_params

    secret = tmp_path / "secret.json"
    secret.write_text('{"enum": ["TOPSECRET-host-file"]}')
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"enum": ["from-the-network"]}')

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        for ref in (secret.as_uri(), f"http://127.0.0.1:{srv.server_port}/probe", "#/nowhere"):
            it = Intent(name="x", params={"type": "object", "properties": {"a": {"$ref": ref}}})
            with pytest.raises(InvalidParams) as ei:
                validate_params("p", it, {"a": 1})
            assert "TOPSECRET" not in str(ei.value) and "from-the-network" not in str(ei.value)
            assert "$ref" in str(ei.value) and ref.lstrip("#") in str(ei.value)
        assert hits == []
        local = Intent(name="y", params={"type": "object", "$defs": {"n": {"type": "integer"}},
                                         "properties": {"a": {"$ref": "#/$defs/n"}}})
        assert validate_params("p", local, {"a": 1}) == {"a": 1}  # a local $ref still works
        with pytest.raises(InvalidParams, match="a: 'x' is not of type 'integer'"):
            validate_params("p", local, {"a": "x"})
    finally:
        srv.shutdown()


def test_caller_data_nested_thousands_deep_is_a_typed_error_everywhere(manager) -> None:
    """Params, a result for a prompt, a result for a UI component: each used to raise a bare RecursionError."""
    deep: object = 1
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidParams, match="more than 100 deep"):
        asyncio.run(manager.run_plugin("hello", {"name": deep}, USER, intent="hello.greet"))
    from karen_hooks import TemplateError
    from karen_hooks._prompts import _json_data

    deeper: object = 1
    for _ in range(100_000):  # past the recursion limit of every Python here (3.12+ raised it in C code)
        deeper = [deeper]
    with pytest.raises(TemplateError, match="nests too deeply"):
        _json_data(deeper, "the result")  # what render_prompt does with the result it is given


def test_a_params_schema_cannot_pin_the_hosts_cpu() -> None:
    """A backtracking pattern or uniqueItems over thousands of objects took seconds to minutes, holding the GIL."""
    import time

    from karen_hooks import Intent
    from karen_hooks._params import REGEX_BUDGET, validate_params

    redos = Intent(name="r", params={"type": "object", "properties": {
        "a": {"type": "string", "pattern": "^(a|aa)+$"},
        "many": {"type": "array", "items": {"type": "string", "pattern": "^(a|aa)+$"}}}})
    t = time.monotonic()
    with pytest.raises(InvalidParams, match="could not be checked against the pattern"):
        validate_params("p", redos, {"a": "a" * 60 + "!"})
    with pytest.raises(InvalidParams, match="could not be checked"):  # one budget for all of a call's checks
        validate_params("p", redos, {"many": ["a" * 60 + "!"] * 50})
    assert time.monotonic() - t < 4 * REGEX_BUDGET + 1
    assert validate_params("p", redos, {"a": "aaaa"}) == {"a": "aaaa"}
    plain = Intent(name="p", params={"type": "object", "properties": {"a": {"type": "string", "pattern": "^[a-z]+$"}},
                                     "patternProperties": {"^x_": {"type": "integer"}}})
    with pytest.raises(InvalidParams, match="a: 'ABC' does not match '\\^\\[a-z\\]\\+\\$'"):
        validate_params("p", plain, {"a": "ABC"})
    with pytest.raises(InvalidParams, match="x_n: 'no' is not of type 'integer'"):
        validate_params("p", plain, {"x_n": "no"})
    closed = Intent(name="c", params={"type": "object", "patternProperties": {"^(a|aa)+$": {}},
                                      "additionalProperties": False})
    with pytest.raises(InvalidParams, match="could not be checked"):  # the property names are matched too
        validate_params("p", closed, {"a" * 60 + "!": 1})
    with pytest.raises(InvalidParams, match="'b' does not match any of the regexes"):
        validate_params("p", closed, {"b": 1})
    assert validate_params("p", closed, {"aaa": 1}) == {"aaa": 1}
    # unevaluatedProperties would match the patterns with re, outside the budget: refused up front
    with pytest.raises(ValueError, match="may not combine unevaluatedProperties with patternProperties"):
        Intent(name="u", params={"type": "object", "patternProperties": {"^(a|aa)+$": {}},
                                 "unevaluatedProperties": False})

    uniq = Intent(name="u", params={"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}})
    t = time.monotonic()
    assert len(validate_params("p", uniq, {"tags": [{"i": i} for i in range(8000)]})["tags"]) == 8000
    assert time.monotonic() - t < 2  # was 115 s
    for dup in ([1, 1.0], [{"a": 1}, {"a": 1.0}], [[1, 2], [1, 2]], ["x", "x"]):
        with pytest.raises(InvalidParams, match="non-unique"):
            validate_params("p", uniq, {"tags": dup})
    for distinct in ([1, True], [0, False], [[1, 2], [2, 1]], [{"a": 1}, {"a": 1, "b": 2}], [None, 0]):
        assert validate_params("p", uniq, {"tags": distinct}) == {"tags": distinct}
