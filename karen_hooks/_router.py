"""PluginRouter: discovers plugins, validates them, and answers "who handles what"."""

from __future__ import annotations

import logging
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy
from pydantic import ValidationError

from ._config import Settings, load_settings
from ._dirplugins import DirectoryPlugin, iter_plugin_folders, load_directory_plugin
from ._errors import AmbiguousIntent, KarenError, PluginLoadError, PluginNotFound
from ._executor import Executor
from ._loader import (
    GROUP,
    Candidate,
    api_version_problem,
    find_entry_points,
    load_directory_handler,
    load_target,
    register,
    spec_for,
    wanted,
)
from ._matching import IntentMatch, match_intents, router_tool_schemas
from ._metrics import get_metrics
from ._models import Intent, LoadProblem, PluginInfo, PluginSpec, UserContext
from ._rbac import is_allowed
from ._text import escape_controls
from ._tracing import enable_hook_tracing
from ._version import __version__ as HOST_VERSION  # noqa: N812

log = logging.getLogger("karen_hooks.router")


def _validate_intents(plugin: str, raw: Any) -> list[Intent]:
    """Turn a ``karen_intent`` answer into Intents, or raise ValueError naming the bad field."""
    if raw is None:
        raise ValueError("karen_intent returned None; return a list of intents (dicts or karen_hooks.Intent)")
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"karen_intent must return a list of intents, got {type(raw).__name__}")
    intents: list[Intent] = []
    for i, item in enumerate(raw):
        try:
            intent = item if isinstance(item, Intent) else Intent.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(f"field {'.'.join(map(str, e['loc'])) or 'intent'!r}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"intent #{i} is invalid: {problems}") from None
        if any(it.name == intent.name for it in intents):
            raise ValueError(f"intent {intent.name!r} is declared twice; intent names must be unique")
        intents.append(intent)
    if not intents:
        raise ValueError("karen_intent returned an empty list; declare at least one intent")
    return intents


def default_executor() -> Executor | None:
    """The process sandbox, or ``None`` where it cannot run (untrusted plugins are then refused)."""
    try:
        from .sandbox import SandboxExecutor
    except ImportError as exc:  # pragma: no cover - only on platforms without the sandbox
        log.warning("karen-hooks sandbox unavailable (%s): untrusted plugins will not load", exc)
        return None
    return SandboxExecutor()


def _contest(name: str, claimants: list[str]) -> str:
    return (f"the plugin name {name!r} is claimed by {' and '.join(claimants)}; none of them is loaded, since "
            "a name decides trust and settings: rename all but one")


class PluginRouter:
    """Discovers installed (``karen.plugins``) and directory plugins and validates them.

    One broken plugin is reported in :attr:`problems` and skipped; the rest load.
    With ``strict`` (``KAREN_STRICT=1``) any problem raises :class:`PluginLoadError`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        executor: Executor | None = None,
        plugin_dir: str | Path | None = None,
        metrics_registry: Any = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        #: where load errors are counted (``None``: prometheus-client's global registry)
        self.metrics_registry = metrics_registry
        if plugin_dir is not None:
            self.settings = self.settings.model_copy(update={"plugin_dir": str(plugin_dir)})
        self._executor = executor
        self._executor_made = executor is not None
        self._plugins: dict[str, PluginInfo] = {}
        self._by_intent: dict[str, str] = {}
        self._callers: dict[str, pluggy.PluginManager] = {}
        self.problems: list[LoadProblem] = []
        self._folder_names: set[str] = set()  # every plugin folder's name, wanted or not
        self.discover()

    # -- discovery -------------------------------------------------------

    @property
    def executor(self) -> Executor | None:
        if not self._executor_made:
            self._executor = default_executor()
            if self._executor is not None and hasattr(self._executor, "on_event"):
                # the sandbox reports its process starts and kills to this router's registry
                self._executor.on_event = get_metrics(self.metrics_registry).sandbox_event
            self._executor_made = True
        return self._executor

    def close(self) -> None:
        """Stop the sandbox this router started (its zygote and workers), if any. Idempotent."""
        if self._executor is not None:
            self._executor.close()

    def discover(self) -> None:
        """(Re)load every plugin. Safe to call again after installing plugins."""
        self._plugins.clear()
        self._by_intent.clear()
        self._callers.clear()
        self.problems = []
        self._contested_intents: set[str] = set()
        self._staged: list[tuple[PluginInfo, pluggy.PluginManager | None]] | None = []
        s = self.settings
        candidates = list(find_entry_points(s.load_plugins, s.disable_plugins))
        folders = [(folder, load_directory_plugin(folder, category))
                   for folder, category in iter_plugin_folders(Path(s.plugin_dir))] if s.plugin_dir else []
        self._folder_names = {d.plugin if isinstance(d, LoadProblem) else d.name for _f, d in folders}
        # A name decides trust and settings, so no load order may decide who gets one:
        # a name two plugins claim is refused for both.
        claims: dict[str, list[str]] = {}
        for cand in candidates:
            claims.setdefault(cand.name, []).append(f"distribution {cand.distribution or cand.entry_point.value}")
        for folder, d in folders:
            if not isinstance(d, LoadProblem) and self._wanted(d.name):
                claims.setdefault(d.name, []).append(str(folder))
        contested = {name: who for name, who in claims.items() if len(who) > 1}
        try:
            for cand in candidates:
                if cand.name in contested:
                    self._problem(LoadProblem(cand.name, _contest(cand.name, contested[cand.name]), cand.distribution))
                else:
                    self._guard(cand.name, cand.distribution, lambda c=cand: self._load_entry_point(c))
            for _folder, d in folders:
                if isinstance(d, LoadProblem):
                    if self._wanted(d.plugin):
                        self._problem(d)
                elif d.name in contested:
                    self._problem(LoadProblem(d.name, _contest(d.name, contested[d.name])))
                elif self._wanted(d.name):
                    self._guard(d.name, None, lambda d=d: self._load_directory(d))
        finally:
            self._settle_staged()
        self._warn_filter_typos()
        if s.strict and self.problems:
            p = self.problems[0]
            raise PluginLoadError(p.plugin, "; ".join(f"{q.plugin}: {q.reason}" for q in self.problems), p.distribution)

    def _wanted(self, name: str) -> bool:
        return wanted(name, self.settings.load_plugins, self.settings.disable_plugins)

    def _problem(self, problem: LoadProblem) -> None:
        where = f" from distribution {problem.distribution}" if problem.distribution else ""
        # (escaped: a folder's or manifest's text must not start a forged line in the log)
        log.warning("plugin %r%s skipped: %s", problem.plugin, where, escape_controls(problem.reason))
        self.problems.append(problem)
        get_metrics(self.metrics_registry).load_error(problem.plugin)

    def _guard(self, name: str, dist: str | None, load: Any) -> None:
        """Each plugin loads inside its own error boundary."""
        try:
            load()
        except Exception as exc:  # noqa: BLE001 - a plugin may raise anything at import
            reason = str(exc) if isinstance(exc, (ValueError, KarenError)) else f"{type(exc).__name__}: {exc}"
            self._problem(LoadProblem(name, reason, dist))

    def _add(self, info: PluginInfo, caller: pluggy.PluginManager | None) -> None:
        if self._staged is not None:  # discovery: intents are settled once every plugin is known
            self._staged.append((info, caller))
            return
        self._install(info, caller)

    def _settle_staged(self) -> None:
        """Add the plugins discovery staged, but none that claims an intent another one claims too.

        Decided over all of them at once, so load order decides nothing: when every claimant
        of a contested intent is refused, no intent of theirs goes free for a later plugin.
        """
        staged, self._staged = self._staged or [], None
        claims: dict[str, list[str]] = {}
        for info, _caller in staged:
            for name in dict.fromkeys(it.name for it in info.intents):
                claims.setdefault(name, []).append(info.name)
        for info, caller in staged:
            rivals = {it.name: [o for o in claims[it.name] if o != info.name] for it in info.intents}
            contested = {name: others for name, others in rivals.items() if others}
            if contested:
                name, others = next(iter(contested.items()))
                self._contested_intents.update(contested)
                self._problem(LoadProblem(info.name, (
                    f"intent {name!r} is also claimed by plugin {', '.join(repr(o) for o in others)}; neither is "
                    "loaded: rename the intent or disable one plugin (KAREN_DISABLE_PLUGINS)"), info.distribution))
            else:
                self._guard(info.name, info.distribution, lambda i=info, c=caller: self._install(i, c))

    def _install(self, info: PluginInfo, caller: pluggy.PluginManager | None) -> None:
        if info.name in self._plugins:
            other = self._plugins[info.name]
            raise ValueError(
                f"the plugin name {info.name!r} is already taken by "
                f"{other.distribution or other.spec.path}; rename one of them"
            )
        for it in info.intents:
            # As with names, load order must not decide which plugin gets an intent's calls
            # (and its callers' params): a contested intent costs every plugin that claims it.
            owner = self._by_intent.get(it.name)
            if it.name in self._contested_intents or owner is not None:
                if owner is not None:
                    self._unload(owner, f"intent {it.name!r} is also claimed by plugin {info.name!r}; neither is "
                                        "loaded: rename the intent or disable one plugin (KAREN_DISABLE_PLUGINS)")
                self._contested_intents.add(it.name)
                raise ValueError(
                    f"intent {it.name!r} is also claimed by plugin {owner or 'another one'!r}; neither is loaded: "
                    "rename the intent or disable one plugin (KAREN_DISABLE_PLUGINS)"
                )
        self._plugins[info.name] = info
        for it in info.intents:
            self._by_intent[it.name] = info.name
        if caller is not None:
            self._callers[info.name] = caller
            if self.settings.trace_plugins:
                enable_hook_tracing(caller, info.name, show_values=self.settings.audit_params)

    def _unload(self, name: str, reason: str) -> None:
        """Take back a plugin loaded earlier in this discovery, as a load problem."""
        info = self._plugins.pop(name)
        self._callers.pop(name, None)
        for it in info.intents:
            if self._by_intent.get(it.name) == name:
                del self._by_intent[it.name]
        self._problem(LoadProblem(name, reason, info.distribution))

    def _load_entry_point(self, cand: Candidate) -> None:
        if (why := api_version_problem(cand, HOST_VERSION)) is not None:
            raise ValueError(why)
        spec = spec_for(cand)
        trusted = self.settings.is_trusted(cand.name)
        ps = self.settings.plugin(cand.name)
        caller = None
        if trusted:
            caller = register(cand.name, load_target(spec.target))
            intents = _validate_intents(cand.name, caller.hook.karen_intent())
        else:
            executor = self.executor
            if executor is None:
                raise ValueError("untrusted and no sandbox is available on this machine; trust it or install on Linux")
            described = executor.describe(spec, ps, self.settings.limits_for(cand.name))
            intents = _validate_intents(cand.name, described.get("intents") if isinstance(described, dict) else None)
        info = PluginInfo(
            name=cand.name, spec=spec, intents=intents, trusted=trusted, sandboxed=not trusted, ui_trusted=ps.ui_trusted
        )
        self._add(info, caller)

    def _load_directory(self, d: DirectoryPlugin) -> None:
        trusted = self.settings.is_trusted(d.name)
        # The manifest may ask to leave the sandbox; only the operator's trust makes that real.
        in_host = trusted and not d.manifest.sandbox
        spec = d.spec()
        caller = register(d.name, load_directory_handler(spec, d.prompt)) if in_host else None
        info = PluginInfo(
            name=d.name,
            spec=spec,
            intents=d.intents,
            trusted=trusted,
            sandboxed=not in_host,
            ui_trusted=self.settings.plugin(d.name).ui_trusted,
            category=d.category,
            prompt=d.prompt,
            manifest=d.manifest.model_dump(),
        )
        self._add(info, caller)

    def register_plugin(self, obj: Any, name: str) -> PluginInfo:
        """Register an in-process plugin object (the embedding application's own code).

        Like ``pluggy.PluginManager.register``: the object is code the host
        application already runs, so it is treated as trusted and called in-host.
        Its intents are validated exactly like an installed plugin's.
        """
        caller = register(name, obj)
        intents = _validate_intents(name, caller.hook.karen_intent())
        # A module names itself; an object names the module its class comes from (for its templates/).
        module = obj.__name__ if isinstance(obj, types.ModuleType) else type(obj).__module__
        spec = PluginSpec(name=name, kind="entry_point", target=module)
        info = PluginInfo(name=name, spec=spec, intents=intents, trusted=True, sandboxed=False,
                          ui_trusted=self.settings.plugin(name).ui_trusted)
        self._add(info, caller)
        return info

    # -- queries ---------------------------------------------------------

    def installed_names(self) -> set[str]:
        """Every plugin name this host could load, whatever the settings filter out or fails to load.

        Installed entry points, folders under ``plugin_dir`` with a readable manifest, and
        plugins registered in code. (Settings that name anything else name nothing.)
        """
        names = {ep.name for ep in entry_points(group=GROUP)} | self._folder_names
        return names | set(self._plugins) | {p.plugin for p in self.problems}

    def _warn_filter_typos(self) -> None:
        """A name in ``load_plugins``/``disable_plugins`` that matches nothing is logged (``plugins check`` fails on it)."""
        s = self.settings
        listed = [("KAREN_DISABLE_PLUGINS", n) for n in s.disable_plugins]
        listed += [("KAREN_LOAD_PLUGINS", n) for n in s.load_plugins or []]
        if listed:
            known = self.installed_names()
            for setting, name in listed:
                if name not in known:
                    log.warning("%s names %r, but no plugin of that name is installed (a typo?)", setting, name)

    def list_plugins(self) -> list[PluginInfo]:
        return [self._plugins[n] for n in sorted(self._plugins)]

    def list_intents(self) -> list[str]:
        """Every loaded intent name, sorted."""
        return sorted(self._by_intent)

    def get_plugin(self, name: str) -> PluginInfo:
        """The plugin called ``name`` (a description: no callable is handed out)."""
        try:
            return self._plugins[name]
        except KeyError:
            raise PluginNotFound(self._not_found(name)) from None

    def plugin_for_intent(self, intent: str) -> PluginInfo:
        owner = self._by_intent.get(intent)
        if owner is None:
            raise PluginNotFound(f"no loaded plugin handles intent {intent!r}; loaded intents: {self.list_intents()}")
        return self._plugins[owner]

    def resolve(self, name: str, intent: str | None = None) -> tuple[PluginInfo, Intent]:
        """Find the plugin and intent for a call: ``name`` is a plugin name or a bare intent name."""
        info = self._plugins.get(name)
        if info is None:
            if intent is None and name in self._by_intent:
                info = self._plugins[self._by_intent[name]]
                intent = name
            else:
                raise PluginNotFound(self._not_found(name))
        if intent is None:
            if len(info.intents) != 1:
                names = [i.name for i in info.intents]
                raise AmbiguousIntent(f"plugin {info.name!r} has several intents {names}; pass intent=")
            return info, info.intents[0]
        found = info.intent(intent)
        if found is None:
            raise PluginNotFound(
                f"plugin {info.name!r} has no intent {intent!r}; its intents are {[i.name for i in info.intents]}"
            )
        return info, found

    def allowed(self, plugin: str, intent: Intent, user_ctx: Any) -> bool:
        """Whether the caller's roles admit them to ``intent`` of ``plugin``."""
        user = UserContext.parse(user_ctx)
        return is_allowed(plugin, intent, user.roles, self.settings)

    # -- routing: ranking and tool schemas live in _matching (docs/routing.md) --

    def match(self, text: str, user_ctx: Any, limit: int = 5, threshold: float | None = None) -> list[IntentMatch]:
        """Ranked candidate intents for an utterance, only those the caller's roles allow."""
        return match_intents(self, text, user_ctx, limit, threshold)

    def tool_schemas(self, user_ctx: Any) -> list[dict[str, Any]]:
        """OpenAI-style tool definitions for every intent the caller may use."""
        return router_tool_schemas(self, user_ctx)

    def trusted_callers(self) -> dict[str, pluggy.PluginManager]:
        """Name -> pluggy manager of each in-host (trusted) plugin, sorted by name.

        For host-extension hooks (memory backends, intent matchers), which are
        never collected from sandboxed plugins.
        """
        return {name: self._callers[name] for name in sorted(self._callers)}

    def _hook_caller(self, name: str) -> pluggy.PluginManager | None:
        """The in-host pluggy manager of a trusted plugin (``None`` for sandboxed ones)."""
        return self._callers.get(name)

    def _not_found(self, name: str) -> str:
        skipped = next((p for p in self.problems if p.plugin == name), None)
        if skipped is not None:
            return f"plugin {name!r} was skipped at load: {skipped.reason}"
        return f"no plugin or intent named {name!r}; loaded plugins: {sorted(self._plugins)}"
