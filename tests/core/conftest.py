"""Real plugin distributions for the core tests.

The distributions under ``dists/`` are built and installed once per session
with pip into a private ``--target`` folder; the ``installed`` fixture puts
that folder on ``sys.path`` for one test, so ``importlib.metadata`` sees real
dist-info and entry points without touching the environment other tests use.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from karen_hooks import Limits, PluginSettings, PluginSpec, load_settings
from karen_hooks._executor import CallOutcome

DISTS = Path(__file__).parent / "dists"
TEST_MODULES = [p.name.replace("-", "_") for p in DISTS.iterdir() if p.is_dir()]


@pytest.fixture(scope="session")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), *sorted(str(p) for p in DISTS.iterdir() if p.is_dir())],
        check=True,
    )
    return target


@pytest.fixture
def installed(dist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(dist_dir))
    monkeypatch.delenv("KAREN_TEST_MARKER_IMPORTED", raising=False)
    importlib.invalidate_caches()
    yield dist_dir
    for mod in [m for m in sys.modules if m.split(".")[0] in TEST_MODULES]:
        del sys.modules[mod]


class RecordingExecutor:
    """Stands in for the sandbox in host-side tests: records what the host asked, runs nothing."""

    def __init__(self, intents: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.intents = intents or {}
        self.described: list[PluginSpec] = []
        self.calls: list[tuple[PluginSpec, str, dict[str, Any]]] = []

    def describe(self, spec: PluginSpec, settings: PluginSettings, limits: Limits) -> dict[str, Any]:
        self.described.append(spec)
        return {"intents": self.intents.get(spec.name, [{"name": f"{spec.name}.x"}])}

    async def call(self, spec: PluginSpec, hook: str, kwargs: dict[str, Any], settings: PluginSettings,
                   limits: Limits, memory: Any = None) -> CallOutcome:
        self.calls.append((spec, hook, kwargs))
        return CallOutcome({"sandboxed": spec.name}, "out", "")

    def close(self) -> None:
        pass


@pytest.fixture
def recorder() -> RecordingExecutor:
    return RecordingExecutor()


def settings(**kw: Any) -> Any:
    """Settings isolated from the developer's environment, config file and memory database."""
    kw.setdefault("memory_url", "memory://")
    return load_settings(environ={}, **kw)


USER = {"user_id": "u1", "roles": ["user"], "tenant_id": "acme"}
