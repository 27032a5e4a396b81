"""``karen`` in-process (``main([...])`` with capsys) and once as a real subprocess."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from karen_hooks import _cli_run
from karen_hooks._cli_common import parse_params, parse_value
from karen_hooks.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- plugins list / info ------------------------------------------------------


def test_list_table(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "plugins", "list")
    assert code == 0, err
    header, rule, *rows = out.splitlines()
    assert header.split() == ["NAME", "VERSION", "DISTRIBUTION", "INTENTS", "TRUSTED", "SANDBOX", "ROLES"]
    by_name = {r.split()[0]: r for r in rows}
    assert set(by_name) == {"boom", "hello", "time-query"}
    assert "karen-plugin-time-query" in by_name["time-query"] and "time.now" in by_name["time-query"]
    assert "greet" in by_name["hello"] and "in_host" in by_name["hello"] and "user" in by_name["hello"]


def test_list_json(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plugins", "list", "--json")
    assert code == 0
    data = {r["name"]: r for r in json.loads(out)}
    tq = data["time-query"]
    assert tq["distribution"] == "karen-plugin-time-query" and tq["version"] == "1.0.0"
    assert tq["trusted"] is True and tq["sandbox"] == "in_host" and tq["error"] is None
    assert tq["required_roles"] == ["user"]
    assert [i["name"] for i in tq["intents"]] == ["time.now"]
    assert tq["intents"][0]["params"]["properties"]["format"]["default"] == "iso"
    assert set(tq["hooks"]) >= {"karen_intent", "karen_run", "karen_render_prompt"}
    assert data["hello"]["kind"] == "directory" and data["hello"]["category"] == "examples"


def test_list_all_shows_load_errors(broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "plugins", "list")
    assert code == 0 and "broken" not in out and "1 plugin(s) failed to load" in err
    code, out, _ = run_cli(capsys, "plugins", "list", "--all", "--json")
    rec = {r["name"]: r for r in json.loads(out)}["broken"]
    assert "plugin_api_version" in rec["error"] and "Field required" in rec["error"]
    code, out, _ = run_cli(capsys, "plugins", "list", "--all")
    assert "ERROR" in out.splitlines()[0] and "broken" in out


def test_list_by_hook(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plugins", "list", "--hook", "karen_render_prompt", "--json")
    assert code == 0
    assert {r["name"] for r in json.loads(out)} == {"hello", "time-query"}  # boom has no prompt.txt
    code, out, _ = run_cli(capsys, "plugins", "list", "--hook", "karen_memory_backend", "--json")
    assert json.loads(out) == []
    code, _, err = run_cli(capsys, "plugins", "list", "--hook", "karen_nope")
    assert code == 1 and err.startswith("error: unknown hook 'karen_nope'")


def test_list_requirements(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plugins", "list", "--requirements")
    assert code == 0 and "karen-plugin-time-query==1.0.0" in out.splitlines()


def test_info(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plugins", "info", "time-query")
    assert code == 0
    assert "distribution: karen-plugin-time-query" in out
    assert "--param timezone=<string> = 'UTC'" in out
    code, out, _ = run_cli(capsys, "plugins", "info", "hello", "--json")
    data = json.loads(out)
    assert data["kind"] == "directory" and data["manifest"]["trusted_ui"] is False


def test_info_unknown_is_one_line(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "plugins", "info", "nope")
    assert code == 1 and out == ""
    assert err.startswith("error: no plugin or intent named 'nope'") and len(err.strip().splitlines()) == 1


# -- plugins check ------------------------------------------------------------


def test_check_ok(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plugins", "check")
    assert code == 0 and out.startswith("ok: 3 plugin(s) loaded")


def test_check_reports_problem_table(broken: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAREN_STRICT", "1")  # check reports every problem even in strict mode
    code, out, err = run_cli(capsys, "plugins", "check")
    assert code == 1
    assert out.splitlines()[0].split() == ["PLUGIN", "DISTRIBUTION", "REASON"]
    assert "broken" in out and "Required fields" in out
    assert "error: 1 problem(s)" in err
    code, out, _ = run_cli(capsys, "plugins", "check", "--json")
    data = json.loads(out)
    assert code == 1 and data["ok"] is False and data["problems"][0]["plugin"] == "broken"


def test_check_finds_bad_prompt_syntax(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (plugin_dir / "examples" / "hello" / "prompt.txt").write_text("{% if %}")
    code, out, _ = run_cli(capsys, "plugins", "check")
    assert code == 1 and "hello" in out and "prompt template line 1" in out


def test_check_fails_on_settings_that_name_no_installed_plugin(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a misspelt disable leaves the plugin enabled: only this check tells the operator
    monkeypatch.setenv("KAREN_DISABLE_PLUGINS", "helo")
    monkeypatch.setenv("KAREN_TRUSTED_PLUGINS", "hello,boom,time-query,weather,zzz-missing")
    code, out, err = run_cli(capsys, "plugins", "check", "--json")
    data = json.loads(out)
    assert code == 1 and data["ok"] is False and "hello" in data["loaded"]
    reasons = {p["plugin"]: p["reason"] for p in data["problems"]}
    # weather is installed, only left out by KAREN_LOAD_PLUGINS: trusting it is not a typo
    assert set(reasons) == {"helo", "zzz-missing"}, reasons
    assert reasons["helo"] == "disable_plugins names 'helo', but no plugin of that name is installed; did you mean 'hello'?"
    assert reasons["zzz-missing"].startswith("trusted_plugins names 'zzz-missing'")


def test_router_logs_a_load_or_disable_filter_that_matches_nothing(
    plugin_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from karen_hooks import PluginRouter, load_settings

    monkeypatch.setenv("KAREN_DISABLE_PLUGINS", "helo,boom")
    with caplog.at_level(logging.WARNING, logger="karen_hooks.router"):
        router = PluginRouter(load_settings(), executor=None)
    typos = [r.getMessage() for r in caplog.records if "no plugin of that name" in r.getMessage()]
    assert typos == ["KAREN_DISABLE_PLUGINS names 'helo', but no plugin of that name is installed (a typo?)"]
    assert "hello" in router.installed_names() and "boom" in router.installed_names()  # disabled, still installed


# -- run ------------------------------------------------------------------------


def test_run_prints_result_and_plugin_output(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "run", "hello", "--param", "name=Ann", "--user", "u1", "--tenant", "t1")
    assert code == 0, err
    assert json.loads(out) == {"message": "Hello, Ann!"}
    assert "--- plugin stdout ---\ngreeting Ann" in err


def test_run_json_by_intent_name(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "run", "greet", "--params-json", '{"name": "Bo"}', "--json", "--role", "admin")
    assert code == 0
    data = json.loads(out)
    assert data["plugin"] == "hello" and data["intent"] == "greet"
    assert data["result"] == {"message": "Hello, Bo!"} and data["stdout"] == "greeting Bo\n"


def test_run_typed_param(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "run", "time-query", "-p", "format=unix", "--json")
    assert code == 0 and isinstance(json.loads(out)["result"]["time"], int)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--role", "guest"], "error: plugin 'hello' intent 'greet' needs one of the roles ['user']"),
        (["--param", "oops"], "error: --param 'oops' must look like key=value"),
        (["--params-json", "[1]"], "error: --params-json must be a JSON object, got list"),
        (["--params-json", "{"], "error: --params-json is not valid JSON"),
    ],
)
def test_run_errors_are_one_line(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "run", "hello", *argv)
    assert code == 1 and out == ""
    assert err.startswith(message) and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_run_invalid_params(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "time-query", "--param", "format=roman")
    assert code == 1 and err.startswith("error: invalid params for plugin 'time-query' intent 'time.now': format:")


def test_run_plugin_failure(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "boom")
    assert code == 1
    assert err.splitlines() == ["about to fail", "error: plugin 'boom' failed: RuntimeError: kaboom"]
    code, _, err = run_cli(capsys, "--debug", "run", "boom")
    assert code == 1 and "Traceback" in err and "raise RuntimeError('kaboom')" in err


def test_parse_values() -> None:
    assert parse_value("3") == 3 and parse_value("2.5") == 2.5 and parse_value("true") is True
    assert parse_value("null") is None and parse_value('["a"]') == ["a"]
    assert parse_value("Europe/Paris") == "Europe/Paris" and parse_value("") == ""
    assert parse_params(["a=1", "b=x=y", "c="], '{"a": 0, "d": [1]}') == {"a": 1, "b": "x=y", "c": "", "d": [1]}


# -- prompt, sandbox doctor, install ---------------------------------------------


def test_prompt(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "prompt", "hello", "--param", "name=Ann", "--result-json", '{"message": "Hi Ann"}')
    assert code == 0, err
    assert out.strip() == "Greet the user warmly. The greeting plugin said: Hi Ann"
    code, out, err = run_cli(capsys, "prompt", "greet", "--param", "name=Bo", "--run", "--tenant", "t1")
    assert code == 0, err
    assert out.strip() == "Greet the user warmly. The greeting plugin said: Hello, Bo!"


def test_prompt_without_result_hints(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "prompt", "hello")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "pass --run or --result-json" in err


def test_sandbox_doctor_guarded(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "karen_hooks.sandbox", None)
    code, _, err = run_cli(capsys, "sandbox", "doctor")
    assert code == 1 and err.startswith("error: the process sandbox is not available")


def test_sandbox_doctor(capsys: pytest.CaptureFixture[str]) -> None:
    from karen_hooks.sandbox import doctor

    missing = [s.name for s in doctor() if not s.active]
    code, out, _ = run_cli(capsys, "sandbox", "doctor", "--json")
    data = json.loads(out)
    assert code == (1 if missing else 0) and data["missing"] == missing
    assert {"name", "active", "detail"} <= set(data["layers"][0])
    code, out, _ = run_cli(capsys, "sandbox", "doctor")
    assert out.splitlines()[0].split()[:2] == ["layer", "state"]


def test_install_runs_pip_in_this_environment(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], check: bool) -> Any:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0 if "ok-pkg" in cmd else 3)

    monkeypatch.setattr(_cli_run.subprocess, "run", fake_run)
    assert run_cli(capsys, "install", "-U", "ok-pkg")[0] == 0
    assert calls[-1] == [sys.executable, "-m", "pip", "install", "--upgrade", "ok-pkg"]
    assert run_cli(capsys, "uninstall", "-y", "ok-pkg")[0] == 0
    assert calls[-1] == [sys.executable, "-m", "pip", "uninstall", "-y", "ok-pkg"]
    code, _, err = run_cli(capsys, "install", "bad-pkg")
    assert code == 3 and err.startswith("error: pip exited with status 3")
    # after '--', an argument starting with '-' reached pip as an option: another index, a requirements file
    n = len(calls)
    for argv in (["install", "--", "--index-url=http://127.0.0.1:9/simple", "ok-pkg"], ["uninstall", "--", "-r", "x"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and "is not a package name or path" in err
    assert len(calls) == n  # pip never ran


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plugins"])
    assert exc.value.code == 2


# -- a real subprocess ----------------------------------------------------------------


def test_console_script(plugin_dir: Path) -> None:
    exe = Path(sys.executable).with_name("karen")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "karen_hooks.cli"]
    proc = subprocess.run(
        [*cmd, "run", "hello", "--param", "name=Sub", "--json"], capture_output=True, text=True, env=os.environ.copy(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == {"message": "Hello, Sub!"}
    proc = subprocess.run([*cmd, "run", "nope"], capture_output=True, text=True, env=os.environ.copy(), timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("error: no plugin or intent named 'nope'")


def test_progress_on_a_terminal(plugin_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from karen_hooks import _cli_common

    monkeypatch.setattr(_cli_common, "progress_enabled", lambda: True)
    code, out, err = run_cli(capsys, "plugins", "check")
    assert code == 0 and out.startswith("ok: 3 plugin(s) loaded")
    assert "[1/3] loading time-query (karen-plugin-time-query)" in err and "[3/3] loading hello" in err
    monkeypatch.setattr(_cli_run.subprocess, "run", lambda cmd, check: subprocess.CompletedProcess(cmd, 0))
    code, _, err = run_cli(capsys, "install", "x-pkg")
    assert code == 0 and err.startswith("installing x-pkg into ")


def test_plugin_text_cannot_drive_the_operators_terminal(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Escape sequences a plugin prints, raises or returns show as text: no title, clipboard (OSC 52) or screen control."""
    ansi = plugin_dir / "examples" / "ansi"
    ansi.mkdir()
    manifest = json.loads((plugin_dir / "examples" / "hello" / "plugin_manifest.json").read_text())
    (ansi / "plugin_manifest.json").write_text(json.dumps({**manifest, "intent": "ansi", "required_roles": [],
                                                           "description": "desc \x1b[2J\nname: forged"}))
    (ansi / "handler.py").write_text(
        "import sys\n"
        "def run(params):\n"
        "    print('title \\x1b]0;PWNED\\x07 bidi \\u202e')\n"
        "    print('clip \\x1b]52;c;ZXZpbA==\\x07 cr \\rfake', file=sys.stderr)\n"
        "    if params.get('fail'):\n"
        "        raise RuntimeError('clear \\x1b[2J')\n"
        "    return 'red \\x1b[31m'\n"
    )
    monkeypatch.setenv("KAREN_LOAD_PLUGINS", "ansi")
    code, out, err = run_cli(capsys, "run", "ansi")
    assert code == 0, err
    for text in (out, err):
        assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert out == "red \\x1b[31m\n"
    assert "title \\x1b]0;PWNED\\x07 bidi \\u202e" in err and "clip \\x1b]52;c;ZXZpbA==\\x07 cr \\x0dfake" in err
    code, out, err = run_cli(capsys, "run", "ansi", "--param", "fail=1")
    assert code == 1 and "\x1b" not in err and "error: plugin 'ansi' failed: RuntimeError: clear \\x1b[2J" in err
    from karen_hooks._cli_common import terminal_safe

    assert terminal_safe("name \udcff") == "name \\udcff"  # encodable by any stdout
    code, out, err = run_cli(capsys, "plugins", "info", "ansi")  # a description cannot forge a field either
    assert code == 0 and "\x1b" not in out and "  ansi: desc \\x1b[2J name: forged" in out
    assert [line for line in out.splitlines() if line.startswith("name:")] == ["name: ansi"]


def test_malformed_schemas_and_prompts_are_problems_not_crashes(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of these crashed `plugins check`, `plugins info` or `run` with an untyped error (and hid the rest)."""
    manifest = json.loads((plugin_dir / "examples" / "hello" / "plugin_manifest.json").read_text())
    cases = {
        "schemalist": {"type": "object", "$schema": []},
        "boolprop": {"type": "object", "properties": {"a": True}},
        "reqint": {"type": "object", "required": 5},
        "nowhere": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}},
    }
    for name, schema in [*cases.items(), ("deepprompt", None)]:
        d = plugin_dir / "examples" / name
        d.mkdir()
        m = {**manifest, "intent": name, "required_roles": []}
        m.pop("prompt", None)
        if schema is not None:
            m["params"] = schema
        (d / "plugin_manifest.json").write_text(json.dumps(m))
        (d / "handler.py").write_text("def run(params):\n    return 1\n")
    (plugin_dir / "examples" / "deepprompt" / "prompt.txt").write_text("{{ " + "(" * 20000 + "1" + ")" * 20000 + " }}")
    monkeypatch.setenv("KAREN_LOAD_PLUGINS", ",".join([*cases, "deepprompt", "hello"]))
    code, out, err = run_cli(capsys, "plugins", "check")
    assert code == 1 and "Traceback" not in err
    assert '"$schema" must be a string' in out and "prompt template nests too deeply" in out
    assert "reqint" in out and "5 is not of type 'array'" in out
    for name in ("boolprop", "reqint"):
        code, out, err = run_cli(capsys, "plugins", "info", name)
        assert code == 0 and f"  {name}: " in out, err
    code, _, err = run_cli(capsys, "run", "nowhere", "--param", "a=1")
    assert code == 1 and err.startswith("error: invalid params for plugin 'nowhere'") and "$ref" in err


def test_params_nested_too_deep_are_one_error_line(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = "[" * 5000 + "]" * 5000
    for argv in (["--param", f"a={deep}"], ["--params-json", '{"a": ' + deep + "}"]):
        code, out, err = run_cli(capsys, "run", "hello", *argv)
        # (Python 3.13 decodes it and the params check refuses it; older ones stop in the decoder)
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
        assert "nests too deeply" in err or "more than 100 deep" in err, err
