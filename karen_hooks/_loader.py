"""Finding plugins and, for trusted ones only, importing them.

Untrusted plugins are described by data only here (entry point value,
distribution, the folder their code lives in); their code is imported by the
sandbox, never by this module.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from importlib.metadata import Distribution, EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pluggy
from packaging.requirements import InvalidRequirement, Requirement

from . import hookspecs
from ._models import PluginSpec

GROUP = "karen.plugins"


@dataclass(frozen=True)
class Candidate:
    """An installed entry point that passed the allow/deny lists."""

    name: str
    entry_point: EntryPoint
    distribution: str | None
    version: str | None


def _dist_of(ep: EntryPoint) -> Distribution | None:
    return getattr(ep, "dist", None)


def wanted(name: str, load: list[str] | None, disable: list[str]) -> bool:
    """Whether the allow list ``load`` (``None``: all) and the deny list ``disable`` let ``name`` load."""
    return (load is None or name in load) and name not in disable


def find_entry_points(load: list[str] | None, disable: list[str]) -> list[Candidate]:
    """Installed ``karen.plugins`` entry points, filtered by name (nothing is imported).

    ``load`` is ``KAREN_LOAD_PLUGINS`` (``None``: all; ``[]``: none);
    ``disable`` is ``KAREN_DISABLE_PLUGINS``.
    """
    found: list[Candidate] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if not wanted(ep.name, load, disable):
            continue
        dist = _dist_of(ep)
        found.append(
            Candidate(
                name=ep.name,
                entry_point=ep,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
            )
        )
    return found


def api_version_problem(candidate: Candidate, host_version: str) -> str | None:
    """Refuse a plugin whose declared ``karen-hooks`` requirement excludes this host."""
    dist = _dist_of(candidate.entry_point)
    for raw in (dist.requires or []) if dist else []:
        try:
            req = Requirement(raw)
        except InvalidRequirement:
            continue
        if req.name.lower().replace("_", "-") != "karen-hooks" or req.marker is not None:
            continue
        if req.specifier and not req.specifier.contains(host_version, prereleases=True):
            return (
                f"it requires karen-hooks{req.specifier} but this host is karen-hooks {host_version} "
                f"(hookspec API {hookspecs.HOOKSPEC_API_VERSION}); install a plugin release built for this host"
            )
    return None


def code_paths_of(module_name: str) -> tuple[str, ...]:
    """The folder the plugin's top-level module is read from, found without importing it."""
    top = module_name.split(".")[0]
    spec = importlib.util.find_spec(top) if top not in sys.modules else sys.modules[top].__spec__
    if spec is None:
        return ()
    if spec.submodule_search_locations:
        return tuple(str(Path(p).resolve()) for p in spec.submodule_search_locations)
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return (str(Path(spec.origin).resolve().parent),)
    return ()


def spec_for(candidate: Candidate) -> PluginSpec:
    ep = candidate.entry_point
    try:
        paths = code_paths_of(ep.module)
    except (ImportError, ValueError):
        paths = ()
    return PluginSpec(
        name=candidate.name,
        kind="entry_point",
        target=ep.value,
        distribution=candidate.distribution,
        version=candidate.version,
        code_paths=paths,
    )


def new_plugin_manager() -> pluggy.PluginManager:
    """A pluggy manager holding the karen hookspecs and no plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def load_target(target: str) -> Any:
    """Import an entry point value ``module`` or ``module:attr`` (trusted plugins only)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


def register(name: str, obj: Any) -> pluggy.PluginManager:
    """One pluggy manager per plugin, so calling one plugin never runs another's hooks."""
    pm = new_plugin_manager()
    pm.register(obj, name=name)
    pm.check_pending()
    return pm


class DirectoryHandler:
    """Adapts an old-format ``handler.py`` (``run(params)``) to the ``karen_run`` hook."""

    def __init__(self, module: Any, prompt: str | None) -> None:
        self._run = module.run
        self._prompt = prompt
        self._takes_ctx = len(inspect.signature(module.run).parameters) >= 2

    @hookspecs.hookimpl
    def karen_run(self, params: Any, ctx: Any) -> Any:
        return self._run(params, ctx) if self._takes_ctx else self._run(params)

    @hookspecs.hookimpl
    def karen_render_prompt(self) -> str | None:
        return self._prompt


def load_directory_handler(spec: PluginSpec, prompt: str | None) -> DirectoryHandler:
    """Import a trusted directory plugin's handler under a name of its own."""
    assert spec.path is not None
    path = Path(spec.path) / spec.target
    mod_name = f"karen_dirplugin_{spec.name.replace('-', '_')}"
    mspec = importlib.util.spec_from_file_location(mod_name, path)
    if mspec is None or mspec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise ImportError(f"{path} does not define run(params)")
    return DirectoryHandler(module, prompt)
