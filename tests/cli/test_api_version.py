"""The host refuses an installed plugin whose declared karen-hooks range excludes it, naming both versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from karen_hooks import __version__
from karen_hooks.hookspecs import HOOKSPEC_API_VERSION

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "karen-plugin-too-old"
version = "0.3.0"
dependencies = ["karen-hooks<1"]

[project.entry-points."karen.plugins"]
too-old = "karen_plugin_too_old"
"""


@pytest.mark.slow
def test_refuses_a_plugin_built_for_another_major(tmp_path: Path, plugin_venv: Any) -> None:
    src = tmp_path / "karen-plugin-too-old"
    (src / "karen_plugin_too_old").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    # never imported: the version check happens on metadata alone
    (src / "karen_plugin_too_old" / "__init__.py").write_text("raise SystemExit('imported!')\n")
    plugin_venv.pip_install(src)
    env = {"KAREN_LOAD_PLUGINS": "too-old", "KAREN_TRUSTED_PLUGINS": "too-old"}

    check = plugin_venv.karen("plugins", "check", "--json", **env)
    assert check.returncode == 1, check.stderr
    [problem] = json.loads(check.stdout)["problems"]
    assert problem["plugin"] == "too-old" and problem["distribution"] == "karen-plugin-too-old"
    reason = problem["reason"]
    assert "requires karen-hooks<1" in reason and f"karen-hooks {__version__}" in reason
    assert f"hookspec API {HOOKSPEC_API_VERSION}" in reason and "imported!" not in reason

    ran = plugin_venv.karen("run", "too-old", **env)
    assert ran.returncode == 1
    assert ran.stderr.startswith("error: plugin 'too-old' was skipped at load: it requires karen-hooks<1")
