"""render_template / build_variables: what legitimate templates can do, and the error messages."""

from __future__ import annotations

import os
import sys

import pytest

from karen_hooks import TemplateError, TemplateSecurityError
from karen_hooks._prompts import build_variables, package_template_root, read_package_template, render_template

USER = {"user_id": "u-42", "roles": ["user", "admin"], "tenant_id": "acme", "token": "s3cr3t", "api_key": "k"}


def test_variables_render() -> None:
    v = build_variables({"city": "Oslo", "days": 3}, USER, {"temp": 4}, {"name": "weather.get", "description": "d"})
    out = render_template(
        "{{ intent.name }} for {{ user.id }}@{{ user.tenant }} ({{ user.roles|join(',') }}): "
        "{{ params.city|upper }} x{{ params.days }} -> {{ result.temp }}C",
        v,
    )
    assert out == "weather.get for u-42@acme (user,admin): OSLO x3 -> 4C"


def test_user_never_carries_secrets() -> None:
    v = build_variables({}, USER)
    assert v["user"] == {"id": "u-42", "roles": ["user", "admin"], "tenant": "acme"}
    with pytest.raises(TemplateError, match="token"):
        render_template("{{ user.token }}", v)


@pytest.mark.parametrize("key", ["prompt", "user", "result", "intent", "params"])
def test_params_cannot_overwrite_host_variables(key: str) -> None:
    v = build_variables({key: "EVIL", "prompt": "EVIL"}, USER, {"r": 1}, "x.y")
    assert render_template("{{ user.id }}|{{ result.r }}|{{ intent.name }}", v) == "u-42|1|x.y"
    assert render_template("{{ params['" + key + "'] }}", v) == "EVIL"
    assert v["user"]["id"] == "u-42" and v["result"] == {"r": 1}


def test_missing_variable_is_named() -> None:
    with pytest.raises(TemplateError, match="'city'"):
        render_template("{{ city }}", build_variables({}, USER))
    with pytest.raises(TemplateError, match="'city'"):
        render_template("Weather in {{ params.city }}", build_variables({}, USER))


def test_syntax_error_has_line() -> None:
    with pytest.raises(TemplateError, match="line 3"):
        render_template("a\nb\n{% if %}", {})


def test_output_cap() -> None:
    v = build_variables({"text": "y" * 5000}, USER)
    assert len(render_template("{{ params.text }}", v, max_output=5000)) == 5000
    with pytest.raises(TemplateError, match="5000"):
        render_template("{{ params.text }}!", v, max_output=5000)


def test_legitimate_features_still_work() -> None:
    v = build_variables({"items": [{"n": "b", "q": 2}, {"n": "a", "q": 1}], "word": "hey"}, USER)
    tpl = (
        "{% for it in params['items']|sort(attribute='n') %}{{ loop.index }}.{{ it.n }}={{ it.q * 2 }}"
        "{% if not loop.last %}, {% endif %}{% endfor %}; {{ params.word.capitalize() }} {{ '%s-%d'|format('a', 3) }}"
        " {{ params['items']|map(attribute='q')|sum }} {{ params.word ~ '!' * 3 }} {{ range(3)|list }}"
        "{% macro m(x) %}<{{ x }}>{% endmacro %} {{ m(1) }} {{ dict(a=1)|tojson }} {{ 'a_b'.split('_') }}"
    )
    assert render_template(tpl, v) == "1.a=2, 2.b=4; Hey a-3 3 hey!!! [0, 1, 2] <1> {\"a\": 1} ['a', 'b']"


def test_immutable_data() -> None:
    v = build_variables({"l": [1]}, USER)
    with pytest.raises(TemplateSecurityError):
        render_template("{{ params.l.append(2) }}", v)
    assert v["params"]["l"] == [1]


def test_deterministic() -> None:
    v = build_variables({"a": [3, 1, 2]}, USER)
    tpl = "{{ params.a|sort }}{{ params.a|unique|list }}"
    assert len({render_template(tpl, v) for _ in range(5)}) == 1
    with pytest.raises(TemplateError):  # |random does not exist
        render_template("{{ params.a|random }}", v)


@pytest.mark.parametrize("module", ["karen_hooks._prompts", "karen_hooks._template_sandbox"])
def test_imports_only_jinja2_stdlib_and_errors(module: str) -> None:
    """The sandbox child imports these modules: their module-level imports stay jinja2 + stdlib + _errors.

    (The host-side ``render_plugin_prompt`` imports the rest inside the function.)
    """
    import ast
    import importlib

    mod = importlib.import_module(module)
    tree = ast.parse(open(mod.__file__ or "", encoding="utf-8").read())
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." + (node.module or "") if node.level else (node.module or "").split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"jinja2", "._errors", "._template_sandbox"}
    assert imported <= allowed, imported - allowed


def test_package_templates(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = os.path.join(str(tmp_path), "kp_demo_pkg")
    os.makedirs(os.path.join(pkg, "templates"))
    with open(os.path.join(pkg, "__init__.py"), "w") as fh:
        fh.write("")
    with open(os.path.join(pkg, "plugin.py"), "w") as fh:
        fh.write("")
    with open(os.path.join(pkg, "templates", "demo.hello.j2"), "w") as fh:
        fh.write("{% include '_header.j2' %}Hello {{ params.name }}")
    with open(os.path.join(pkg, "templates", "_header.j2"), "w") as fh:
        fh.write("[{{ intent.name }}] ")
    monkeypatch.syspath_prepend(str(tmp_path))
    root = package_template_root("kp_demo_pkg.plugin:plugin")
    assert root == os.path.realpath(os.path.join(pkg, "templates"))
    assert package_template_root("kp_demo_pkg") == root
    src = read_package_template(root, "demo.hello")
    assert src is not None
    out = render_template(src, build_variables({"name": "Ann"}, USER, None, "demo.hello"), template_root=root)
    assert out == "[demo.hello] Hello Ann"
    assert read_package_template(root, "missing") is None
    assert read_package_template(root, "../x") is None
