"""``karen plugins new``: write a complete plugin distribution that passes its own tests.

The files are written from the templates below (tokens like ``__MODULE__``
are replaced; nothing else is interpreted, so Jinja and f-strings survive).
``_migrate`` reuses the packaging parts for old directory plugins.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ._cli_common import CliError
from ._dirplugins import CATEGORIES
from ._version import __version__

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
HOST_REQUIREMENT = f"karen-hooks>={__version__.split('.')[0]},<{int(__version__.split('.')[0]) + 1}"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "__DIST__"
version = "0.1.0"
description = __DESCRIPTION_LITERAL__
readme = "README.md"
requires-python = ">=3.10"
keywords = ["karen-hooks", "karen-plugin", "__CATEGORY__"]
# The host refuses a plugin whose karen-hooks range excludes it, naming both versions.
dependencies = ["__HOST_REQUIREMENT__"__EXTRA_DEPS__]

[project.optional-dependencies]
test = ["pytest>=7.4"]

# The plugin's name (left) is what operators trust, configure and call.
[project.entry-points."karen.plugins"]
__NAME__ = "__MODULE__"

[tool.setuptools.packages.find]
include = ["__MODULE__*"]

[tool.setuptools.package-data]
__MODULE__ = ["templates/*.j2"__EXTRA_DATA__]

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-ra --strict-markers"
"""

TOX_INI = """\
# `pip install tox`, then `tox` (the tests) or `tox -e sandbox` (the same tests,
# the plugin running untrusted in the real karen-hooks process sandbox; Linux).
[tox]
requires = tox>=4
env_list = py3

[testenv]
description = the plugin's tests against karen-hooks
extras = test
# PIP_FIND_LINKS / PIP_INDEX_URL reach pip inside tox (e.g. a local karen-hooks wheel).
pass_env = PIP_*
commands = pytest {posargs}

[testenv:sandbox]
description = the plugin's tests, run untrusted through the real process sandbox
# seccomp is an optional layer of the sandbox; without it the tests warn that it is missing
deps = karen-hooks[seccomp]>=1,<2
commands = pytest --karen-sandbox {posargs}
"""

MODULE = '''\
"""__DIST__: __DESCRIPTION_DOC__"""

from __future__ import annotations

from importlib import resources
from typing import Any

from pydantic import BaseModel, Field

from karen_hooks import hookimpl

INTENT = "__INTENT__"


class __CLASS__(BaseModel):
    """Params of ``__INTENT__``. The host validates them before your code runs."""

    name: str = Field("world", min_length=1, max_length=100, description="who to greet")
    shout: bool = Field(False, description="answer in capitals")


def greet(params: __CLASS__) -> dict[str, str]:
    """The plugin's logic, kept free of the host so it is easy to unit-test."""
    message = f"Hello, {params.name}!"
    return {"message": message.upper() if params.shout else message}


@hookimpl
def karen_intent() -> list[dict[str, Any]]:
    return [
        {
            "name": INTENT,
            "description": __DESCRIPTION_LITERAL__,
            "examples": ["say hello", "greet Ann"],
            "required_roles": ["user"],
            "params": __CLASS__,
        }
    ]


@hookimpl
def karen_run(intent: str, params: __CLASS__, ctx: Any) -> dict[str, str]:
    return greet(params)


@hookimpl
def karen_render_prompt(intent: str) -> str | None:
    """The prompt template of ``intent``: templates/<intent>.j2 (Jinja2, rendered sandboxed by the host)."""
    if intent != INTENT:
        return None
    return resources.files(__name__).joinpath("templates", f"{intent}.j2").read_text(encoding="utf-8")
'''

TEMPLATE = """\
The user asked to be greeted{% if params.name != "world" %} as {{ params.name }}{% endif %}.
The __NAME__ plugin answered: {{ result.message }}
Reply in one friendly sentence.
"""

TESTS = '''\
"""Tests of __DIST__, using the karen-hooks pytest plugin (fixtures karen_host and karen_user).

`pytest --karen-sandbox` runs the karen_host tests with the plugin untrusted, in the real sandbox.
"""

import pytest

from karen_hooks import AccessDenied, InvalidParams
from __MODULE__ import INTENT, __CLASS__, greet, karen_render_prompt


def test_greet() -> None:
    assert greet(__CLASS__(name="Ann")) == {"message": "Hello, Ann!"}
    assert greet(__CLASS__(shout=True)) == {"message": "HELLO, WORLD!"}


@pytest.mark.karen_plugins("__NAME__")
def test_runs_through_the_host(karen_host, karen_user) -> None:
    result, stdout, stderr = karen_host.run("__NAME__", {"name": "Ann"}, user=karen_user())
    assert result == {"message": "Hello, Ann!"}
    assert karen_host.intents() == [INTENT]


@pytest.mark.karen_plugins("__NAME__")
def test_callable_by_intent_name_and_by_admins(karen_host, karen_user) -> None:
    out = karen_host.run(INTENT, {"shout": True}, user=karen_user(roles=["admin"]))
    assert out.result == {"message": "HELLO, WORLD!"}


@pytest.mark.karen_plugins("__NAME__")
def test_needs_the_user_role(karen_host, karen_user) -> None:
    with pytest.raises(AccessDenied):
        karen_host.run("__NAME__", {}, user=karen_user(roles=["guest"]))


@pytest.mark.karen_plugins("__NAME__")
def test_params_are_validated(karen_host) -> None:
    with pytest.raises(InvalidParams, match="name"):
        karen_host.run("__NAME__", {"name": ""})


@pytest.mark.karen_plugins("__NAME__")
def test_prompt_renders_through_the_host(karen_host) -> None:
    text = karen_host.render_prompt("__NAME__", {"name": "Ann"}, result={"message": "Hello, Ann!"})
    assert "as Ann." in text and "answered: Hello, Ann!" in text


def test_prompt_template() -> None:
    assert "{{ result.message }}" in karen_render_prompt(intent=INTENT)
    assert karen_render_prompt(intent="something.else") is None
'''

README = """\
# __DIST__

__DESCRIPTION__

A [karen-hooks](https://pypi.org/project/karen-hooks/) plugin (category: __CATEGORY__).

## Install

    karen install __DIST__        # or: pip install __DIST__
    karen plugins list

Plugins run untrusted, in the karen-hooks process sandbox, unless the operator
trusts them (`KAREN_TRUSTED_PLUGINS=__NAME__` or `[plugins.__NAME__] trusted = true`).

## Use

    karen run __NAME__ --param name=Ann --user me --role user
    karen prompt __NAME__ --param name=Ann --result-json '{"message": "Hello, Ann!"}'

| intent | roles | params |
| --- | --- | --- |
| `__INTENT__` | `user` | `name` (str, default `world`), `shout` (bool) |

## Develop

    pip install -e ".[test]"
    pytest                   # in-process: easy to debug
    pytest --karen-sandbox   # the plugin untrusted, through the real sandbox
    tox                      # a clean virtualenv

The tests use the `karen_host` and `karen_user` fixtures that karen-hooks'
pytest plugin provides; see karen-hooks' docs/testing-plugins.md.
"""


def names_for(name: str) -> dict[str, str]:
    """The distribution, module, class and intent names derived from a plugin name."""
    name = name.strip().lower().removeprefix("karen-plugin-").replace("_", "-")
    if not _NAME.match(name):
        raise CliError(
            f"plugin name {name!r} is not usable: use lowercase letters, digits and single '-' "
            "between them, starting with a letter (e.g. 'weather' or 'stock-quote')"
        )
    return {
        "__NAME__": name,
        "__DIST__": f"karen-plugin-{name}",
        "__MODULE__": "karen_plugin_" + name.replace("-", "_"),
        "__CLASS__": "".join(p.capitalize() for p in name.split("-")) + "Params",
        "__INTENT__": f"{name}.hello",
    }


def render(template: str, tokens: dict[str, str]) -> str:
    for key in sorted(tokens, key=len, reverse=True):  # longer tokens first: __DESCRIPTION_LITERAL__ before __DESCRIPTION__
        template = template.replace(key, tokens[key])
    return template


def check_category(category: str) -> str:
    if category not in CATEGORIES:
        raise CliError(f"category {category!r} is not one of {', '.join(CATEGORIES)}")
    return category


def target_dir(parent: str | Path, dist: str, force: bool) -> Path:
    out = Path(parent) / dist
    if out.exists() and any(out.iterdir()) and not force:
        raise CliError(f"{out} already exists and is not empty; choose another --dir or pass --force")
    return out


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def packaging_tokens(tokens: dict[str, str], description: str, category: str) -> dict[str, str]:
    return {
        **tokens,
        "__DESCRIPTION__": description,
        # one literal for TOML and Python alike: JSON escapes quotes and controls, and with
        # ensure_ascii off an emoji stays itself (a \ud83d\ude00 pair is not valid TOML)
        "__DESCRIPTION_LITERAL__": json.dumps(description, ensure_ascii=False),
        # inside a docstring: one line, and no way to close it early
        "__DESCRIPTION_DOC__": " ".join(description.split()).replace("\\", "\\\\").replace('"', '\\"'),
        "__CATEGORY__": category,
        "__HOST_REQUIREMENT__": HOST_REQUIREMENT,
        "__EXTRA_DEPS__": "",
        "__EXTRA_DATA__": "",
    }


def write_plugin(
    name: str, parent: str | Path = ".", *, category: str = "examples", description: str | None = None, force: bool = False
) -> Path:
    """Write ``karen-plugin-NAME/`` under ``parent`` and return its path."""
    tokens = names_for(name)
    desc = " ".join((description or f"Greets the user (a karen-hooks plugin generated by 'karen plugins new {tokens['__NAME__']}').").split())
    tokens = packaging_tokens(tokens, desc, check_category(category))
    root = target_dir(parent, tokens["__DIST__"], force)
    module = tokens["__MODULE__"]
    write_files(
        root,
        {
            "pyproject.toml": render(PYPROJECT, tokens),
            "README.md": render(README, tokens),
            "tox.ini": TOX_INI,
            f"{module}/__init__.py": render(MODULE, tokens),
            f"{module}/templates/{tokens['__INTENT__']}.j2": render(TEMPLATE, tokens),
            f"tests/test_{module.removeprefix('karen_plugin_')}.py": render(TESTS, tokens),
        },
    )
    return root
