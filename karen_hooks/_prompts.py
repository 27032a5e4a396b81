"""Safe prompt templates: variables, rendering, a plugin's own template files.

:func:`render_template` is the one entry point. It is called in the host for
trusted plugins and *inside the process sandbox* for untrusted ones, so this
module imports only jinja2, the standard library and karen-hooks' own
dependency-free modules, and its output depends only on its arguments. The
environment it renders in, and everything that environment forbids, is in
:mod:`karen_hooks._template_sandbox`.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from typing import Any

from jinja2.exceptions import SecurityError, TemplateNotFound, TemplateSyntaxError, UndefinedError

from ._errors import TemplateError, TemplateSecurityError
from ._template_sandbox import MAX_OUTPUT, KarenSandbox, PluginTemplateLoader, _compile


def build_variables(
    params: Mapping[str, Any] | None,
    user: Mapping[str, Any] | None,
    result: Any = None,
    intent: Mapping[str, Any] | str | None = None,
) -> dict[str, Any]:
    """The variables a prompt template sees. Host values cannot be overwritten by the caller.

    - ``params``: the caller's (validated) params, only ever under this name;
      a param called ``prompt``, ``user`` or ``result`` stays ``params.prompt``...
    - ``user``: ``{"id", "roles", "tenant"}`` and nothing else (no tokens,
      no extra user_ctx keys).
    - ``result``: the plugin's result (JSON data) or ``None``.
    - ``intent``: ``{"name", "description"}``.

    ``user`` accepts a ``UserContext``-like mapping with ``user_id`` /
    ``roles`` / ``tenant_id`` keys (or ``id`` / ``tenant``).
    """
    u = dict(user or {})
    roles = u.get("roles") or []
    if isinstance(intent, str):
        intent_vars: dict[str, Any] = {"name": intent, "description": ""}
    else:
        i = dict(intent or {})
        intent_vars = {"name": i.get("name"), "description": i.get("description", "")}
    return {
        "params": dict(params or {}),
        "user": {
            "id": u.get("user_id", u.get("id")),
            "roles": [str(r) for r in roles],
            "tenant": u.get("tenant_id", u.get("tenant")),
        },
        "result": result,
        "intent": intent_vars,
    }


def render_template(
    template: str,
    variables: dict[str, Any],
    template_root: str | None = None,
    max_output: int = MAX_OUTPUT,
) -> str:
    """Render ``template`` with ``variables`` in the karen sandbox; return the text.

    ``template_root`` is the plugin's own template directory (for
    ``{% include %}``); ``None`` means no includes at all. The output is cut
    off with an error (not truncated) past ``max_output`` characters.

    Raises :class:`TemplateSecurityError` when the template tries something
    the sandbox forbids or hits a limit, and :class:`TemplateError` for
    syntax errors (with the line), undefined variables (named), a missing
    include, an oversized output or any other failure while rendering.
    """
    if not isinstance(template, str):
        raise TemplateError(f"a prompt template must be a str, got {type(template).__name__}")
    env = KarenSandbox(template_root, max_output)
    try:
        compiled = env.template_class.from_code(env, _compile(template), env.make_globals(None))
        out: list[str] = []
        size = 0
        for chunk in compiled.generate(dict(variables)):
            size += len(chunk)
            if size > max_output:
                raise TemplateError(f"prompt output exceeds the {max_output} character cap")
            out.append(chunk)
        return "".join(out)
    except (TemplateError, TemplateSecurityError):
        raise
    except SecurityError as exc:
        raise TemplateSecurityError(f"template refused: {exc}") from None
    except TemplateSyntaxError as exc:
        where = f" in {exc.name}" if exc.name else ""
        raise TemplateError(f"template syntax error{where} on line {exc.lineno}: {exc.message}") from None
    except UndefinedError as exc:
        raise TemplateError(f"undefined template variable: {exc.message}") from None
    except TemplateNotFound as exc:
        raise TemplateError(f"included template {exc.name!r} not found in the plugin's template directory") from None
    except (RecursionError, MemoryError, OverflowError) as exc:
        raise TemplateSecurityError(f"template refused: {type(exc).__name__}: nesting or size limit hit") from None
    except Exception as exc:
        raise TemplateError(f"template failed: {type(exc).__name__}: {exc}") from None


def package_template_root(module: str | types.ModuleType) -> str | None:
    """The ``templates/`` directory shipped in a plugin's package, or ``None``.

    ``module`` is the plugin module (or its dotted name; an entry point
    ``module:attr`` is accepted). The directory is found with
    :mod:`importlib.resources` next to the module: in its package when the
    module is a package, else in the package that contains it. Only a real
    directory on disk is returned (a zipped package has no usable root).
    """
    import importlib
    import importlib.resources
    from pathlib import Path

    name = module if isinstance(module, str) else module.__name__
    name = name.split(":", 1)[0]
    mod = importlib.import_module(name)
    package = name if hasattr(mod, "__path__") else name.rpartition(".")[0]
    if not package:
        file = getattr(mod, "__file__", None)
        candidate = Path(file).parent / "templates" if file else None
        return str(candidate.resolve()) if candidate is not None and candidate.is_dir() else None
    try:
        res = importlib.resources.files(package) / "templates"
    except (ModuleNotFoundError, TypeError):
        return None
    if isinstance(res, Path) and res.is_dir():
        return str(res.resolve())
    return None


def read_package_template(root: str | None, intent: str) -> str | None:
    """The source of ``<root>/<intent>.j2`` (the naming convention), or ``None``."""
    if not root:
        return None
    try:  # the loader {% include %} uses: the same path checks and read cap
        source, _, _ = PluginTemplateLoader(root).get_source(None, f"{intent}.j2")
    except (SecurityError, TemplateNotFound):
        return None
    return source


# -- host side: PluginManager.render_prompt delegates here ---------------------
# (imports are local so the sandbox child, which imports this module, stays light)


def _json_data(value: Any, what: str) -> Any:
    import json

    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"{what} must be JSON data to be used in a prompt: {exc}") from None
    except RecursionError:
        raise TemplateError(f"{what} nests too deeply to be used in a prompt") from None


def spec_template_root(spec: Any) -> str | None:
    """Where a plugin's ``{% include %}`` may read from, given its ``PluginSpec``.

    Entry-point plugins: the ``templates/`` directory of the plugin's package
    (imports the plugin module, so call it where that is allowed: in-host for
    trusted plugins, in the sandbox child for untrusted ones). Directory
    plugins: their ``templates/`` folder. ``None`` when there is none.
    """
    if spec.kind == "directory":
        folder = os.path.join(spec.path or "", "templates")
        return os.path.realpath(folder) if spec.path and os.path.isdir(folder) else None
    try:
        return package_template_root(spec.target)
    except Exception:  # noqa: BLE001 - no importable package means no includes, not a failure
        return None


def plugin_template_root(info: Any) -> str | None:
    """:func:`spec_template_root` of a ``PluginInfo``."""
    return spec_template_root(info.spec)


def _reraise_template_error(plugin: str, exc: Exception) -> None:
    """A template failure inside the sandbox comes back as PluginError; give it its real type."""
    text = str(exc)
    for marker, cls in (("TemplateSecurityError: ", TemplateSecurityError), ("TemplateError: ", TemplateError)):
        if marker in text:
            raise cls(f"plugin {plugin!r}: {text.split(marker, 1)[1]}") from exc


async def render_plugin_prompt(
    manager: Any, name: str, params: Any, user_ctx: Any, result: Any = None, intent: str | None = None
) -> str:
    """``PluginManager.render_prompt``: checks, find the template, render it where it is safe to.

    Same checks as ``run_plugin`` first (caller, roles, params). A trusted
    plugin's template (its ``karen_render_prompt``, else a directory
    plugin's manifest prompt / ``prompt.txt``) renders in-host in the
    sandboxed environment; an untrusted plugin's renders inside the process
    sandbox, so resource bombs hit the sandbox's limits.
    """
    import asyncio

    from ._errors import InvalidResult, PluginError, UntrustedPluginError

    user, info, it, validated = manager._prepare(name, params, user_ctx, intent)
    from ._params import params_to_json

    params_json = params_to_json(validated)
    variables = build_variables(
        params_json,
        {"user_id": user.user_id, "roles": list(user.roles), "tenant_id": user.tenant_id},
        _json_data(result, "result"),
        {"name": it.name, "description": it.description},
    )
    ctx = manager._context(user, info, it)
    caller = manager.router._hook_caller(info.name)
    if caller is not None:
        from ._ui import call_host_hook

        template = await call_host_hook(
            caller, info.name, "karen_render_prompt", intent=it.name, params=validated, ctx=ctx
        )
        if template is None:
            template = info.prompt
        if template is None:
            raise TemplateError(f"plugin {info.name!r} has no prompt template for intent {it.name!r}")
        if not isinstance(template, str):
            raise InvalidResult(info.name, f"karen_render_prompt must return a str, got {type(template).__name__}")
        root = plugin_template_root(info)
        try:
            return await asyncio.to_thread(render_template, template, variables, root)
        except (TemplateError, TemplateSecurityError) as exc:
            raise type(exc)(f"plugin {info.name!r} intent {it.name!r}: {exc}") from None
    executor = manager.router.executor
    if executor is None:
        raise UntrustedPluginError(
            f"plugin {info.name!r} is untrusted and no sandbox is available; its prompt is never rendered in the host"
        )
    try:
        outcome = await executor.call(
            info.spec,
            "karen_render_prompt",
            {
                "intent": it.name,
                "params": params_json,
                "ctx": ctx.to_json(),
                "variables": variables,
                "template": info.prompt,
            },
            manager.settings.plugin(info.name),
            manager.settings.limits_for(info.name),
        )
    except PluginError as exc:
        if type(exc) is PluginError:
            _reraise_template_error(info.name, exc)
        raise
    text = outcome.result
    if text is None:
        raise TemplateError(f"plugin {info.name!r} has no prompt template for intent {it.name!r}")
    if not isinstance(text, str):
        raise InvalidResult(info.name, f"the sandbox returned a {type(text).__name__} for a prompt, not a str")
    if len(text) > MAX_OUTPUT:
        raise TemplateError(f"plugin {info.name!r}: prompt output exceeds the {MAX_OUTPUT} character cap")
    return text
