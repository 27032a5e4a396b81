"""``karen plugins new``: the generated distribution installs, loads, and passes its own tests."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from karen_hooks._cli_common import CliError
from karen_hooks._scaffold import write_plugin
from karen_hooks.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_writes_a_complete_distribution(tmp_path: Path) -> None:
    root = write_plugin("stock-quote", tmp_path, category="integrations", description='Quotes "stocks".')
    assert root == tmp_path / "karen-plugin-stock-quote"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "karen_plugin_stock_quote/__init__.py",
        "karen_plugin_stock_quote/templates/stock-quote.hello.j2",
        "pyproject.toml",
        "tests/test_stock_quote.py",
        "tox.ini",
    ]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "karen-plugin-stock-quote"
    assert meta["project"]["description"] == 'Quotes "stocks".'
    assert "karen-hooks>=1,<2" in meta["project"]["dependencies"]
    assert meta["project"]["entry-points"]["karen.plugins"] == {"stock-quote": "karen_plugin_stock_quote"}
    assert "integrations" in meta["project"]["keywords"]
    for py in root.rglob("*.py"):
        compile(py.read_text(), str(py), "exec")
    assert "__" not in (root / "README.md").read_text().replace("__init__", "")


@pytest.mark.parametrize("description", ['Weather \U0001f600', 'says """hi""" \\ and "quotes"', "two\nlines\tand a \x07 bell"])
def test_any_description_gives_valid_toml_and_python(tmp_path: Path, description: str) -> None:
    """An emoji made pyproject.toml invalid (a \\ud83d\\ude00 pair); triple quotes injected code into the module."""
    root = write_plugin("desc-test", tmp_path, category="examples", description=description)
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["description"] in (description, " ".join(description.split()))  # (one line)
    for py in root.rglob("*.py"):
        tree = compile(py.read_text(), str(py), "exec", flags=0x400)  # ast.PyCF_ONLY_AST
        if py.name == "__init__.py":
            assert "hi" in str(ast.get_docstring(tree)) or "Weather" in str(ast.get_docstring(tree)) \
                or "two lines" in str(ast.get_docstring(tree))
            assert [type(n).__name__ for n in tree.body][:2] == ["Expr", "ImportFrom"]  # the docstring, then code


@pytest.mark.parametrize("bad", ["Weather!", "1abc", "a--b", "", "x_"])
def test_refuses_bad_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CliError, match="is not usable"):
        write_plugin(bad, tmp_path)


def test_cli_new_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "new", "karen-plugin-demo", "--dir", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / 'karen-plugin-demo'}" in capsys.readouterr().out
    assert main(["plugins", "new", "demo", "--dir", str(tmp_path)]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert main(["plugins", "new", "demo", "--dir", str(tmp_path), "--force"]) == 0
    assert main(["plugins", "new", "demo", "--dir", str(tmp_path), "--category", "toys", "--force"]) == 1
    assert "category 'toys' is not one of" in capsys.readouterr().err


@pytest.mark.slow
def test_generated_package_installs_and_passes_its_own_tests(tmp_path: Path, plugin_venv: Any) -> None:
    root = write_plugin("scaffold-probe", tmp_path)
    plugin_venv.pip_install(root)
    proc = plugin_venv.run_package_tests(root, tmp_path / "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "7 passed" in proc.stdout
    listed = plugin_venv.karen("plugins", "list", "--json", KAREN_LOAD_PLUGINS="scaffold-probe", KAREN_TRUSTED_PLUGINS="scaffold-probe")
    assert listed.returncode == 0, listed.stderr
    [rec] = json.loads(listed.stdout)
    assert rec["distribution"] == "karen-plugin-scaffold-probe" and rec["intents"][0]["name"] == "scaffold-probe.hello"
    ran = plugin_venv.karen(
        "run", "scaffold-probe", "--param", "name=Ann", "--json",
        KAREN_LOAD_PLUGINS="scaffold-probe", KAREN_TRUSTED_PLUGINS="scaffold-probe", KAREN_MEMORY_URL="memory://",
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["result"] == {"message": "Hello, Ann!"}


@pytest.mark.skipif(os.environ.get("KAREN_SCAFFOLD_TOX") != "1", reason="full tox run: set KAREN_SCAFFOLD_TOX=1 (tox env 'scaffold')")
def test_generated_package_passes_tox(tmp_path: Path) -> None:
    tox = shutil.which("tox")
    if tox is None:
        pytest.fail("KAREN_SCAFFOLD_TOX=1 but tox is not installed")
    root = write_plugin("tox-probe", tmp_path / "src")
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAREN_", "KARI_", "PYTEST_", "TOX_"))}
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [str(wheels), env.get("PIP_FIND_LINKS", "")]))
    proc = subprocess.run([tox, "-q", "-e", "py3,sandbox"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
