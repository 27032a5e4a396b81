"""PluginManager: runs a plugin's intent for a caller, with every check first."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import traceback
from typing import Any, Literal

from pydantic import BaseModel

from ._capture import start as capture_start
from ._capture import stop as capture_stop
from ._config import Settings
from ._errors import InvalidResult, KarenError, PluginError, UntrustedPluginError
from ._jsondata import MAX_DATA_DEPTH
from ._metrics import get_metrics
from ._models import Intent, PluginContext, PluginInfo, UserContext
from ._observer import CallObserver
from ._params import params_to_json, validate_params
from ._prompts import render_plugin_prompt
from ._rbac import check_access
from ._router import PluginRouter
from ._ui import UIComponentResult, ui_component_for
from .memory import MemoryManager, TenantMemory, UnavailableMemory

log = logging.getLogger("karen_hooks.manager")


class RunResult(tuple[Any, str, str]):
    """``(result, stdout, stderr)`` — unpacks like the old API — plus details as attributes.

    ``plugin`` and ``intent`` name what ran; ``warnings`` lists problems that
    did not fail the call (for example a memory write that did not persist).
    """

    plugin: str
    intent: str
    warnings: list[str]

    def __new__(cls, result: Any, stdout: str, stderr: str, *, plugin: str, intent: str) -> RunResult:
        self = super().__new__(cls, (result, stdout, stderr))
        self.plugin = plugin
        self.intent = intent
        self.warnings = []
        return self

    @property
    def result(self) -> Any:
        return self[0]

    @property
    def stdout(self) -> str:
        return str(self[1])

    @property
    def stderr(self) -> str:
        return str(self[2])


_SCALARS = (str, int, bool)  # float is not here: NaN and infinities are not JSON


def ensure_json(plugin: str, result: Any) -> Any:
    """Results must be JSON data; pydantic models are dumped, anything else is refused."""
    if result is None or type(result) in _SCALARS:
        return result
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidResult(plugin, f"returned a result that is not JSON-serialisable ({exc}); return dicts, lists, str, int, float, bool or None") from None
    except RecursionError:
        raise InvalidResult(plugin, f"returned a result that nests too deeply; keep it under {MAX_DATA_DEPTH} levels") from None
    return result


class _LazyMemory:
    """``ctx.memory`` that opens the tenant's handle on first use, so calls that never touch memory pay nothing."""

    __slots__ = ("_factory", "_handle")

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._handle: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._handle is None:
            self._handle = self._factory()
        return getattr(self._handle, name)


class PluginManager:
    """Runs plugins: validates the caller, checks roles and params, then calls in-host or in the sandbox."""

    def __init__(
        self,
        router: PluginRouter | None = None,
        settings: Settings | None = None,
        *,
        memory: MemoryManager | Literal[False] | None = None,
        metrics_registry: Any = None,
        observe: bool = True,
    ) -> None:
        self.router = router if router is not None else PluginRouter(settings, metrics_registry=metrics_registry)
        self.settings = settings if settings is not None else self.router.settings
        self._memory = memory
        # Metrics, audit log and spans for every call (observe=False: none of them; see docs/operations.md).
        registry = metrics_registry if metrics_registry is not None else getattr(self.router, "metrics_registry", None)
        self.observer = CallObserver(self, get_metrics(registry)) if observe else None
        if self.observer is not None and memory:
            self.observer.metrics.watch_memory(memory)

    @property
    def memory(self) -> MemoryManager | None:
        """Tenant-isolated memory: ``memory=`` when given, else opened from ``settings.memory_url``
        on first use (other URL schemes are offered to trusted plugins); ``None`` with ``memory=False``."""
        if self._memory is None:
            trusted = list(self.router.trusted_callers().values())
            self._memory = MemoryManager(settings=self.settings, hook=trusted)
            if self.observer is not None:
                self.observer.metrics.watch_memory(self._memory)
        return self._memory or None

    def _memory_handle(self, user: UserContext, plugin: str) -> TenantMemory | UnavailableMemory | None:
        try:
            memory = self.memory
        except KarenError as exc:  # an unusable memory never stops the plugin from running
            log.warning("memory unavailable: %s", exc)
            return UnavailableMemory(f"memory unavailable: {exc}")
        return None if memory is None else memory.handle_for(user, plugin)

    async def _remember(self, run: RunResult, user: UserContext, params: Any) -> None:
        """Persist a successful run; a failure is logged and counted by the memory and added to ``run.warnings``."""
        if not (self.settings.remember_runs and self.settings.plugin(run.plugin).remember):
            return  # opted out: no thread hop, no memory opened
        try:
            memory = self.memory
        except KarenError as exc:
            run.warnings.append(f"memory: this run was not remembered (memory unavailable: {exc})")
            return
        if memory is None:
            return
        status = await asyncio.to_thread(memory.remember_run, user, run.plugin, run.intent, params, run.result)
        if status.error is not None:
            run.warnings.append(f"memory: this run was not remembered ({status.error})")

    def _authorize(self, name: str, user_ctx: Any, intent: str | None) -> tuple[UserContext, PluginInfo, Intent]:
        """The caller, what they call, and whether their roles admit them, in that order."""
        user = UserContext.parse(user_ctx)
        info, it = self.router.resolve(name, intent)
        check_access(info.name, it, user.roles, self.settings)
        return user, info, it

    def _prepare(
        self, name: str, params: Any, user_ctx: Any, intent: str | None
    ) -> tuple[UserContext, PluginInfo, Intent, Any]:
        """Every check that happens before plugin code runs, in order."""
        user, info, it = self._authorize(name, user_ctx, intent)
        return user, info, it, validate_params(info.name, it, params)

    def _context(self, user: UserContext, info: PluginInfo, it: Intent) -> PluginContext:
        return PluginContext(
            user_id=user.user_id, tenant_id=user.tenant_id, roles=list(user.roles), intent=it.name, plugin=info.name
        )

    async def run_plugin(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        user_ctx: dict[str, Any] | UserContext | None = None,
        *,
        intent: str | None = None,
    ) -> RunResult:
        """Run ``name`` (a plugin, or a bare intent) for the caller in ``user_ctx``.

        Returns a :class:`RunResult` that unpacks as ``result, stdout, stderr``.
        """
        observer = self.observer
        if observer is None:
            return await self._run_plugin(name, params, user_ctx, intent)
        call = observer.begin(name, intent)
        if call is None:  # could not be observed (logged): runs as if unobserved
            return await self._run_plugin(name, params, user_ctx, intent)
        try:
            user = UserContext.parse(user_ctx)  # the first check of every call; parsed once, audited as parsed
            run = await self._run_plugin(name, params, user, intent)
        except BaseException as exc:
            observer.failed(call, exc, name, params, user_ctx)
            raise
        observer.ok(call, run, params, user)
        return run

    async def _run_plugin(
        self, name: str, params: dict[str, Any] | None, user_ctx: dict[str, Any] | UserContext | None, intent: str | None
    ) -> RunResult:
        user, info, it, validated = self._prepare(name, params, user_ctx, intent)
        ctx = self._context(user, info, it)
        caller = self.router._hook_caller(info.name)
        if self._memory is not False:  # memory=False: plugins see ctx.memory is None
            # in-host calls open the handle only if the plugin touches it; the sandbox gets it as its bridge
            ctx.memory = (
                _LazyMemory(lambda: self._memory_handle(user, info.name))
                if caller is not None
                else self._memory_handle(user, info.name)
            )
        if caller is not None:
            result, out, err = await self._run_in_host(info, caller, it, validated, ctx)
        else:
            result, out, err = await self._run_sandboxed(info, it, validated, ctx)
        run = RunResult(ensure_json(info.name, result), out, err, plugin=info.name, intent=it.name)
        await self._remember(run, user, validated)
        return run

    async def render_prompt(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        user_ctx: dict[str, Any] | UserContext | None = None,
        result: Any = None,
        intent: str | None = None,
    ) -> str:
        """Render the plugin's prompt template for ``intent`` with ``params``, the caller and ``result``.

        Same checks as :meth:`run_plugin`; see docs/prompts.md. Untrusted plugins render in the sandbox.
        """
        return await render_plugin_prompt(self, name, params, user_ctx, result, intent)

    async def ui_component(
        self, name: str, result: Any, user_ctx: dict[str, Any] | UserContext | None, intent: str | None = None
    ) -> UIComponentResult:
        """The plugin's UI component for ``result``, or why UI is disabled (docs/ui-components.md)."""
        return await ui_component_for(self, name, result, user_ctx, intent)

    async def _run_in_host(
        self, info: PluginInfo, caller: Any, it: Intent, params: Any, ctx: PluginContext
    ) -> tuple[Any, str, str]:
        (out, err), token = capture_start()  # not a `with`: this is the hot path
        try:
            result = caller.hook.karen_run(intent=it.name, params=params, ctx=ctx)
            if inspect.isawaitable(result):
                result = await result
        except (KarenError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the plugin's failure becomes a typed error
            raise PluginError(
                info.name, f"{type(exc).__name__}: {exc}", traceback.format_exc(), err.getvalue()
            ) from exc
        finally:
            capture_stop(token)
        return result, out.getvalue(), err.getvalue()

    async def _run_sandboxed(
        self, info: PluginInfo, it: Intent, params: Any, ctx: PluginContext
    ) -> tuple[Any, str, str]:
        executor = self.router.executor
        if executor is None:
            raise UntrustedPluginError(
                f"plugin {info.name!r} is untrusted and no sandbox is available; it is never run in the host. "
                "Trust it (KAREN_TRUSTED_PLUGINS) only if you have reviewed its code"
            )
        outcome = await executor.call(
            info.spec,
            "karen_run",
            {"intent": it.name, "params": params_to_json(params), "ctx": ctx.to_json()},
            self.settings.plugin(info.name),
            self.settings.limits_for(info.name),
            memory=ctx.memory,
        )
        return outcome.result, outcome.stdout, outcome.stderr
