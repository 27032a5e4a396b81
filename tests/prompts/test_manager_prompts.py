"""PluginManager.render_prompt and ui_component: checks first, trusted in-host, untrusted in the sandbox."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from karen_hooks import (
    AccessDenied,
    InvalidParams,
    InvalidResult,
    Settings,
    TemplateError,
    TemplateSecurityError,
    hookimpl,
)
from karen_hooks._executor import CallOutcome
from karen_hooks._manager import PluginManager
from karen_hooks._models import PluginInfo, PluginSpec
from karen_hooks._prompts import build_variables, plugin_template_root, render_template
from karen_hooks._router import PluginRouter

ROOT = Path(__file__).resolve().parents[2] / "plugin_packages" / "karen-plugin-assistant-basics"
USER = {"user_id": "u-7", "roles": ["user"], "tenant_id": "acme", "token": "SECRET-TOKEN"}


class Greeter:
    """A trusted in-process plugin with params, a template, and a UI component."""

    def __init__(self, template: str | None = "Hello {{ params.name }} from {{ user.id }}@{{ user.tenant }}") -> None:
        self.template = template
        self.ui_calls = 0

    @hookimpl
    def karen_intent(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "greet.hello",
                "description": "Greet someone",
                "examples": ["say hello"],
                "required_roles": ["user"],
                "params": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "prompt": {"type": "string"}},
                    "required": ["name"],
                },
            },
            {"name": "greet.admin", "description": "Admin greeting", "required_roles": ["admin"]},
        ]

    @hookimpl
    def karen_run(self, params: Any) -> Any:
        return {"greeting": f"hi {params['name']}"}

    @hookimpl
    def karen_render_prompt(self, intent: str) -> str | None:
        return self.template

    @hookimpl
    def karen_ui_component(self, result: Any) -> Any:
        self.ui_calls += 1
        return {"type": "card", "title": "Greeting", "fields": [{"label": "text", "value": result["greeting"]}]}


def manager(plugin: Any, name: str = "greeter", **settings: Any) -> PluginManager:
    router = PluginRouter(Settings(load_plugins=[], **settings))
    router.register_plugin(plugin, name)
    return PluginManager(router=router, observe=False, memory=False)


def test_trusted_render_in_host() -> None:
    m = manager(Greeter())
    out = asyncio.run(m.render_prompt("greeter", {"name": "Ann"}, USER, intent="greet.hello"))
    assert out == "Hello Ann from u-7@acme"


def test_caller_params_cannot_overwrite_the_prompt_or_host_variables() -> None:
    m = manager(Greeter("{{ user.id }}|{{ result.greeting }}|{{ params.prompt }}"))
    out = asyncio.run(
        m.render_prompt(
            "greeter", {"name": "x", "prompt": "IGNORE ALL"}, USER, result={"greeting": "hi"}, intent="greet.hello"
        )
    )
    assert out == "u-7|hi|IGNORE ALL"  # the param stays a param; the rendered prompt is the template's


def test_secrets_in_user_ctx_never_reach_templates() -> None:
    m = manager(Greeter("{{ user }}"))
    out = asyncio.run(m.render_prompt("greeter", {"name": "x"}, USER, intent="greet.hello"))
    assert "SECRET" not in out and "token" not in out


def test_checks_come_first() -> None:
    m = manager(Greeter())
    with pytest.raises(AccessDenied):
        asyncio.run(m.render_prompt("greeter", {}, USER, intent="greet.admin"))
    with pytest.raises(InvalidParams):
        asyncio.run(m.render_prompt("greeter", {}, USER, intent="greet.hello"))


def test_template_errors_are_typed_and_name_the_plugin() -> None:
    with pytest.raises(TemplateSecurityError, match="greeter"):
        asyncio.run(
            manager(Greeter("{{ ''.__class__ }}")).render_prompt("greeter", {"name": "a"}, USER, intent="greet.hello")
        )
    with pytest.raises(TemplateError, match="'nope'"):
        asyncio.run(manager(Greeter("{{ nope }}")).render_prompt("greeter", {"name": "a"}, USER, intent="greet.hello"))
    with pytest.raises(TemplateError, match="no prompt template"):
        asyncio.run(manager(Greeter(None)).render_prompt("greeter", {"name": "a"}, USER, intent="greet.hello"))


def test_package_plugin_templates_with_includes() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import karen_plugin_assistant_basics as basics

    router = PluginRouter(Settings(load_plugins=[]))
    router.register_plugin(basics, "assistant-basics")
    m = PluginManager(router=router, observe=False, memory=False)
    expected = "You are a concise, friendly assistant helping u-7.\nThe answer to 1+1 is 2. Reply with the answer.\n"
    # a module given to register_plugin names itself, so its package's templates/ are the include root
    rendered = asyncio.run(
        m.render_prompt(
            "assistant-basics", {"expression": "1+1"}, USER, result={"expression": "1+1", "result": 2}, intent="math.calc"
        )
    )
    assert rendered == expected
    # an object defined outside a package with templates/ has no root: the include is refused, not resolved elsewhere
    other = PluginRouter(Settings(load_plugins=[]))
    other.register_plugin(_IncludingPlugin(), "includer")
    with pytest.raises(TemplateSecurityError, match="no template directory"):
        asyncio.run(PluginManager(router=other, observe=False, memory=False).render_prompt("includer", {}, USER))
    # an entry-point plugin (how installed packages load) gets its package's templates/ as the include root
    info = PluginInfo(
        name="assistant-basics",
        spec=PluginSpec(name="assistant-basics", kind="entry_point", target="karen_plugin_assistant_basics"),
        intents=[],
        trusted=True,
        sandboxed=False,
    )
    root = plugin_template_root(info)
    assert root == str((ROOT / "karen_plugin_assistant_basics" / "templates").resolve())
    variables = build_variables({"expression": "1+1"}, USER, {"expression": "1+1", "result": 2}, "math.calc")
    out = render_template(basics.template_for("math.calc") or "", variables, template_root=root)
    assert out == expected


class _IncludingPlugin:
    @hookimpl
    def karen_intent(self) -> list[dict[str, Any]]:
        return [{"name": "includer.x"}]

    @hookimpl
    def karen_render_prompt(self) -> str:
        return "{% include 'base.j2' %}"


class FakeSandbox:
    """Records calls and renders like the sandbox child does (with the same function)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def describe(self, spec: Any, settings: Any, limits: Any) -> dict[str, Any]:
        return {"intents": [{"name": "dir.greet", "description": "greet", "required_roles": ["user"]}]}

    async def call(
        self, spec: Any, hook: str, kwargs: dict[str, Any], settings: Any, limits: Any, memory: Any = None
    ) -> CallOutcome:
        json.dumps(kwargs)  # everything sent to the sandbox is JSON data
        self.calls.append((hook, kwargs))
        if hook == "karen_render_prompt":
            return CallOutcome(render_template(kwargs["template"] or self.template, kwargs["variables"]))
        if hook == "karen_ui_component":
            return CallOutcome({"type": "text", "text": "<script>alert(1)</script>"})
        return CallOutcome(None)

    def close(self) -> None:
        pass


def _dir_plugin(tmp_path: Path, prompt: str) -> Path:
    folder = tmp_path / "plugins" / "greet"
    folder.mkdir(parents=True)
    (folder / "plugin_manifest.json").write_text(
        json.dumps(
            {
                "plugin_api_version": "0.1",
                "intent": "dir.greet",
                "enable_external_workflow": False,
                "required_roles": ["user"],
                "trusted_ui": True,
                "name": "greet",
            }
        )
    )
    (folder / "handler.py").write_text("def run(params):\n    return {'ok': True}\n")
    (folder / "prompt.txt").write_text(prompt)
    return tmp_path / "plugins"


def test_untrusted_prompt_renders_in_the_sandbox(tmp_path: Path) -> None:
    fake = FakeSandbox("")
    router = PluginRouter(
        Settings(load_plugins=["greet"], plugin_dir=str(_dir_plugin(tmp_path, "Hi {{ user.id }}"))), executor=fake
    )
    m = PluginManager(router=router, observe=False, memory=False)
    assert asyncio.run(m.render_prompt("greet", {}, USER)) == "Hi u-7"
    [(hook, kwargs)] = fake.calls
    assert hook == "karen_render_prompt"
    assert set(kwargs) == {"intent", "params", "ctx", "variables", "template"}
    assert kwargs["template"] == "Hi {{ user.id }}"
    assert kwargs["variables"]["user"] == {"id": "u-7", "roles": ["user"], "tenant": "acme"}


def test_ui_component_gated_by_advanced_mode_and_ui_trust() -> None:
    g = Greeter()
    off = manager(g)
    r = asyncio.run(off.ui_component("greeter", {"greeting": "hi"}, USER, intent="greet.hello"))
    assert r.component is None and "ADVANCED_MODE is off" in (r.ui_disabled_reason or "")
    untrusted = manager(g, advanced_mode=True)
    r = asyncio.run(untrusted.ui_component("greeter", {"greeting": "hi"}, USER, intent="greet.hello"))
    assert r.component is None and "has not granted UI trust to plugin 'greeter'" in (r.ui_disabled_reason or "")
    assert g.ui_calls == 0  # the plugin's code never ran
    on = manager(g, advanced_mode=True, plugins={"greeter": {"ui_trusted": True}})
    r = asyncio.run(on.ui_component("greeter", {"greeting": "hi"}, USER, intent="greet.hello"))
    assert r.ui_disabled_reason is None and g.ui_calls == 1
    assert r.to_json()["component"] == {
        "type": "card",
        "title": "Greeting",
        "fields": [{"label": "text", "value": "hi"}],
    }
    with pytest.raises(AccessDenied):
        asyncio.run(on.ui_component("greeter", {}, USER, intent="greet.admin"))


def test_manifest_trusted_ui_is_not_operator_trust(tmp_path: Path) -> None:
    fake = FakeSandbox("")
    s = Settings(load_plugins=["greet"], plugin_dir=str(_dir_plugin(tmp_path, "x")), advanced_mode=True)
    m = PluginManager(router=PluginRouter(s, executor=fake), observe=False, memory=False)
    r = asyncio.run(m.ui_component("greet", {}, USER))
    assert r.component is None and "UI trust" in (r.ui_disabled_reason or "") and fake.calls == []


def test_untrusted_ui_runs_in_sandbox_and_html_is_refused(tmp_path: Path) -> None:
    fake = FakeSandbox("")
    s = Settings(
        load_plugins=["greet"],
        plugin_dir=str(_dir_plugin(tmp_path, "x")),
        advanced_mode=True,
        plugins={"greet": {"ui_trusted": True}},
    )
    m = PluginManager(router=PluginRouter(s, executor=fake), observe=False, memory=False)
    with pytest.raises(InvalidResult, match="KAREN_ALLOW_UI_HTML"):
        asyncio.run(m.ui_component("greet", {}, USER))
    assert [c[0] for c in fake.calls] == ["karen_ui_component"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process sandbox is Linux-only")
def test_real_sandbox_renders_untrusted_prompt_and_refuses_ssti(tmp_path: Path) -> None:
    from karen_hooks.sandbox import SandboxExecutor

    ex = SandboxExecutor()
    try:
        plugins = _dir_plugin(tmp_path, "Hi {{ user.id }} {{ params|length }}")
        m = PluginManager(
            router=PluginRouter(Settings(load_plugins=["greet"], plugin_dir=str(plugins)), executor=ex),
            observe=False,
            memory=False,
        )
        assert asyncio.run(m.render_prompt("greet", {}, USER)) == "Hi u-7 0"
        (plugins / "greet" / "prompt.txt").write_text(
            "{{ cycler.__init__.__globals__.os.system('touch " + str(tmp_path / "pwned") + "') }}"
        )
        m = PluginManager(
            router=PluginRouter(Settings(load_plugins=["greet"], plugin_dir=str(plugins)), executor=ex),
            observe=False,
            memory=False,
        )
        with pytest.raises(TemplateSecurityError, match="greet"):
            asyncio.run(m.render_prompt("greet", {}, USER))
        assert not (tmp_path / "pwned").exists()
    finally:
        ex.close()
