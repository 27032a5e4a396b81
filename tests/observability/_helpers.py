"""Shared helpers: tiny directory plugins and an HTTP scrape of /metrics."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from karen_hooks import PluginManager, PluginRouter, load_settings

HANDLERS = {
    "okplug": ("ok.run", [], "def run(params):\n    return {'ok': True}\n", None),
    "secret": ("secret.run", ["admin"], "def run(params):\n    return 'secret'\n", None),
    "typed": (
        "typed.run",
        [],
        "def run(params):\n    return params['n'] * 2\n",
        {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    ),
    "crash": ("crash.run", [], "def run(params):\n    raise RuntimeError('boom')\n", None),
    "noisy": ("noisy.run", [], "import sys\ndef run(params):\n    print('hi', file=sys.stderr)\n    return 1\n", None),
}
SLEEPY = ("sleepy.run", [], "import time\ndef run(params):\n    time.sleep(30)\n    return 'late'\n", None)
USER = {"user_id": "u-1", "roles": ["user"], "tenant_id": "t-1"}


def write_plugin(root: Path, name: str, spec: tuple[str, list[str], str, Any], *, sandbox: bool = False) -> None:
    intent, roles, source, params = spec
    folder = root / name
    folder.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "plugin_api_version": "1.0",
        "name": name,
        "intent": intent,
        "enable_external_workflow": False,
        "required_roles": roles,
        "trusted_ui": False,
        "sandbox": sandbox,
    }
    if params is not None:
        manifest["params"] = params
    (folder / "plugin_manifest.json").write_text(json.dumps(manifest))
    (folder / "handler.py").write_text(source)


def write_plugins(root: Path) -> list[str]:
    """The trusted in-host plugins plus one broken folder (a load error)."""
    for name, spec in HANDLERS.items():
        write_plugin(root, name, spec)
    broken = root / "broken"
    broken.mkdir()
    (broken / "plugin_manifest.json").write_text("{not json")
    (broken / "handler.py").write_text("")
    return [*HANDLERS, "broken"]


def make_manager(root: Path, registry: Any, **settings: Any) -> PluginManager:
    names = [p.name for p in root.iterdir()]
    overrides: dict[str, Any] = {"plugin_dir": str(root), "load_plugins": names, "trusted_plugins": list(HANDLERS)}
    overrides.update(settings)
    s = load_settings(environ={}, **overrides)
    router = PluginRouter(s, metrics_registry=registry)
    return PluginManager(router, memory=False)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from exposition text."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)
