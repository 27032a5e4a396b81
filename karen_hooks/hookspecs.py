"""The plugin contract: every hook a karen-hooks plugin can implement.

This module is the plugin author's reference. ``docs/hookspecs.md`` is
generated from these docstrings (``python -m karen_hooks._docgen``) and a
test fails when the two drift apart.

Implement a hook by defining a function of the same name in the module (or
object) your ``karen.plugins`` entry point names, decorated with
``karen_hooks.hookimpl`` (or ``pluggy.HookimplMarker("karen")``). An
implementation may accept *fewer* arguments than the spec lists: pluggy passes
only the ones you name, so new arguments can be added without breaking you.

Hooks marked *per plugin* are called on one plugin at a time: calling plugin A
never runs plugin B's implementation. Hooks marked *host extension* let a
**trusted** plugin extend the host itself (they run in the host process and are
never collected from untrusted plugins).
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT_NAME = "karen"
#: Version of this contract. A plugin distribution that declares a requirement
#: on ``karen-hooks`` excluding this major version is refused at load time.
HOOKSPEC_API_VERSION = "1.0"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(firstresult=True)
def karen_intent() -> Any:
    """*Per plugin.* Return the list of intents this plugin handles.

    Each intent is a dict or a ``karen_hooks.Intent`` with:

    - ``name`` (str, required): unique across all installed plugins, e.g.
      ``"time.now"``. Letters, digits, ``.``, ``_``, ``-``.
    - ``description`` (str): one sentence; used for routing and tool schemas.
    - ``examples`` (list of str): utterances that should route here.
    - ``required_roles`` (list of str): the caller needs *any one* of them;
      an empty list lets any caller in. Operators may override this.
    - ``params``: a pydantic model class, or a JSON Schema dict describing an
      object, or omitted for "no params".

    Called once at discovery (inside the sandbox for untrusted plugins; the
    answer is cached per distribution name and version). A plugin whose
    answer is not a valid list is reported and skipped, never half-loaded.
    """


@hookspec(firstresult=True)
def karen_run(intent: str, params: Any, ctx: Any) -> Any:
    """*Per plugin.* Do the work for ``intent`` and return a JSON-serialisable result.

    May be a plain function or ``async def``.

    - ``intent``: the intent name being run (a plugin with several intents
      branches on it).
    - ``params``: already validated. An instance of the intent's pydantic
      model when it declared one, otherwise a dict checked against its JSON
      Schema.
    - ``ctx``: a ``karen_hooks.PluginContext`` with ``user_id``,
      ``tenant_id``, ``roles``, ``intent`` and ``memory`` (a handle scoped
      to the caller's tenant; see the memory docs).

    Anything printed to stdout/stderr is captured for this call only and
    returned to the host beside the result. Raise an exception to fail the
    call: the host wraps it in ``PluginError`` with your traceback.
    """


@hookspec(firstresult=True)
def karen_render_prompt(intent: str, params: Any, ctx: Any) -> str | None:
    """*Per plugin.* Return a Jinja2 template string for ``intent``, or ``None``.

    The host renders it in Jinja2's ``SandboxedEnvironment`` with
    ``StrictUndefined`` and an output size cap. Variables available to the
    template: ``params``, ``user`` (``id``, ``roles``, ``tenant``),
    ``result`` and ``intent``. Untrusted plugins' templates are rendered
    inside the process sandbox.
    """


@hookspec(firstresult=True)
def karen_ui_component(intent: str, result: Any, ctx: Any) -> Any:
    """*Per plugin.* Describe a UI component for a result, or return ``None``.

    Only called when the operator granted this plugin UI trust **and**
    ``ADVANCED_MODE`` is on; otherwise your code is not run at all. Return
    JSON data matching the UI component schema (``type``, ``title``,
    ``fields``, ``actions``); raw HTML or script is rejected unless the
    operator enabled ``KAREN_ALLOW_UI_HTML``.
    """


@hookspec(firstresult=True)
def karen_memory_backend(url: str) -> Any:
    """*Host extension.* Return a memory backend for ``url``, or ``None``.

    Return an object implementing ``karen_hooks.memory.MemoryBackend`` when
    you handle the URL's scheme (e.g. ``redis://``); return ``None`` to let
    other plugins try. Only trusted plugins are asked.
    """


@hookspec(firstresult=True)
def karen_intent_matcher() -> Any:
    """*Host extension.* Return an intent matcher to replace the default BM25 one.

    The object must have ``match(text, intents, limit) -> list[(intent_name,
    score)]``. Only trusted plugins are asked; the first non-``None`` answer
    wins.
    """


#: Hooks called on one plugin at a time (the plugin's own behaviour).
PER_PLUGIN_HOOKS = ("karen_intent", "karen_run", "karen_render_prompt", "karen_ui_component")
#: Hooks that extend the host, collected from trusted plugins only.
HOST_EXTENSION_HOOKS = ("karen_memory_backend", "karen_intent_matcher")
