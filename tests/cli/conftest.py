"""An isolated host for CLI tests: the example directory plugin (trusted, in-host) and time-query."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "scaffold"))
from venvtools import plugin_venv  # noqa: E402,F401  (a fixture: a throw-away venv)

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "plugins" / "examples" / "hello"

_HOST_ENV = (
    "KAREN_CONFIG", "KARI_PLUGIN_DIR", "KAREN_PLUGIN_DIR", "KAREN_LOAD_PLUGINS", "KAREN_DISABLE_PLUGINS",
    "KAREN_TRUSTED_PLUGINS", "KAREN_STRICT", "KAREN_DEFAULT_TENANT", "KAREN_MEMORY_URL", "ADVANCED_MODE",
)


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``KARI_PLUGIN_DIR`` with a copy of examples/.../hello that may run in the host, and a ``boom`` plugin that raises."""
    for var in _HOST_ENV:
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "plugins"
    hello = root / "examples" / "hello"
    shutil.copytree(HELLO, hello)
    manifest = json.loads((hello / "plugin_manifest.json").read_text())
    manifest["sandbox"] = False
    (hello / "plugin_manifest.json").write_text(json.dumps(manifest))
    boom = root / "examples" / "boom"
    boom.mkdir()
    (boom / "plugin_manifest.json").write_text(json.dumps({**manifest, "intent": "boom.explode", "required_roles": []}))
    (boom / "handler.py").write_text("def run(params):\n    import sys\n    print('about to fail', file=sys.stderr)\n    raise RuntimeError('kaboom')\n")
    monkeypatch.setenv("KARI_PLUGIN_DIR", str(root))
    monkeypatch.setenv("KAREN_LOAD_PLUGINS", "hello,boom,time-query")
    monkeypatch.setenv("KAREN_TRUSTED_PLUGINS", "hello,boom,time-query")
    monkeypatch.setenv("KAREN_MEMORY_URL", "memory://")
    return root


@pytest.fixture
def broken(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Adds ``broken``: a manifest missing the old required fields."""
    folder = plugin_dir / "examples" / "broken"
    folder.mkdir()
    (folder / "plugin_manifest.json").write_text(json.dumps({"intent": "x"}))
    (folder / "handler.py").write_text("def run(params):\n    return 1\n")
    monkeypatch.setenv("KAREN_LOAD_PLUGINS", "hello,boom,time-query,broken")
    return folder
