"""``karen plugins migrate``: an old directory plugin becomes a distribution that installs and runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from karen_hooks._cli_common import CliError
from karen_hooks._migrate import migrate
from karen_hooks.cli import main

HELLO = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "examples" / "hello"


def test_migrates_the_example(tmp_path: Path) -> None:
    root, notes = migrate(HELLO, tmp_path)
    assert root == tmp_path / "karen-plugin-hello" and notes == []
    pkg = root / "karen_plugin_hello"
    assert (pkg / "handler.py").read_text() == (HELLO / "handler.py").read_text()
    assert (pkg / "templates" / "greet.j2").read_text() == (HELLO / "prompt.txt").read_text()
    assert 'hello = "karen_plugin_hello"' in (root / "pyproject.toml").read_text()
    assert "examples" in (root / "pyproject.toml").read_text()
    for py in root.rglob("*.py"):
        compile(py.read_text(), str(py), "exec")


def test_notes_and_extras(tmp_path: Path) -> None:
    src = tmp_path / "old" / "ai" / "summarize"
    shutil.copytree(HELLO, src)
    manifest = json.loads((src / "plugin_manifest.json").read_text())
    manifest.update(sandbox=False, intent=["sum.short", "sum.long"], params={"type": "object"})
    (src / "plugin_manifest.json").write_text(json.dumps(manifest))
    (src / "ui.py").write_text("")
    (src / "requirements.txt").write_text("# deps\nrequests>=2  # http\n")
    (src / "words.txt").write_text("a\n")
    root, notes = migrate(src, tmp_path / "out")
    assert any("ui.py was not migrated" in n for n in notes) and any('"sandbox": false' in n for n in notes)
    pyproject = (root / "pyproject.toml").read_text()
    assert '"requests>=2"' in pyproject and '"words.txt"' in pyproject and '"ai"' in pyproject
    assert not (root / "karen_plugin_summarize" / "ui.py").exists()
    assert {p.name for p in (root / "karen_plugin_summarize" / "templates").iterdir()} == {"sum.short.j2", "sum.long.j2"}


def test_refuses_invalid_plugins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CliError, match="has no plugin_manifest.json"):
        migrate(tmp_path, tmp_path)
    (tmp_path / "plugin_manifest.json").write_text('{"intent": "x"}')
    assert main(["plugins", "migrate", str(tmp_path), "--dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a valid directory plugin" in err and "plugin_api_version" in err


def test_refuses_symlinks_and_files_that_would_replace_generated_ones(tmp_path: Path) -> None:
    """A link in the folder copied what it pointed to (/etc/shadow, all of /root) into the package to publish."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    for i, (name, make) in enumerate([
        ("data.txt", lambda p: p.symlink_to(secret)),
        ("assets", lambda p: p.symlink_to(tmp_path)),
        ("nested", lambda p: (p.mkdir(), (p / "inner").symlink_to(secret))),
        ("__init__.py", lambda p: p.write_text("# not the adapter")),
        ("templates", lambda p: (p.mkdir(), (p / "greet.j2").write_text("mine"))),
    ]):
        src = tmp_path / f"src{i}" / "hello"
        shutil.copytree(HELLO, src)
        make(src / name)
        match = "symbolic link" if i < 3 else "would overwrite"
        with pytest.raises(CliError, match=match):
            migrate(src, tmp_path / f"out{i}")
        assert not (tmp_path / f"out{i}").exists() or not any((tmp_path / f"out{i}").rglob("*TOPSECRET*"))
        assert "TOPSECRET" not in "".join(p.read_text() for p in (tmp_path / f"out{i}").rglob("*") if p.is_file())


@pytest.mark.slow
def test_migrated_package_installs_runs_and_passes_its_tests(tmp_path: Path, plugin_venv: Any) -> None:
    assert main(["plugins", "migrate", str(HELLO), "--dir", str(tmp_path)]) == 0
    root = tmp_path / "karen-plugin-hello"
    plugin_venv.pip_install(root)
    proc = plugin_venv.run_package_tests(root, tmp_path / "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {"KAREN_LOAD_PLUGINS": "hello", "KAREN_MEMORY_URL": "memory://"}
    trusted = plugin_venv.karen("run", "hello", "--param", "name=Ann", "--json", KAREN_TRUSTED_PLUGINS="hello", **env)
    assert trusted.returncode == 0, trusted.stderr
    out = json.loads(trusted.stdout)
    assert out["result"] == {"message": "Hello, Ann!"} and out["stdout"] == "greeting Ann\n"
    # untrusted, the default: the same handler through the process sandbox
    sandboxed = plugin_venv.karen("run", "greet", "--param", "name=Bo", "--json", **env)
    assert sandboxed.returncode == 0, sandboxed.stderr
    assert json.loads(sandboxed.stdout)["result"] == {"message": "Hello, Bo!"}
