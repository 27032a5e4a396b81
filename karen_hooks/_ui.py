"""UI components: trust-gated, JSON-only, validated against a documented schema.

A plugin's ``karen_ui_component`` hook runs only when the operator turned
``ADVANCED_MODE`` on **and** granted that plugin UI trust
(``[plugins.NAME] ui_trusted = true``); :func:`ui_disabled_reason` says why
not otherwise. What it returns is data, checked by :func:`validate_component`
against :class:`UIComponent` (docs/ui-components.md). Strings may not carry
HTML tags or script URLs unless the operator enabled ``KAREN_ALLOW_UI_HTML``,
which also unlocks the ``html`` field.
"""

from __future__ import annotations

import inspect
import json
import re
import traceback
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator

from ._config import Settings
from ._errors import InvalidResult, KarenError, PluginError, UntrustedPluginError
from ._models import _INTENT_NAME

#: Component types a plugin may return.
COMPONENT_TYPES = ("card", "table", "list", "form", "text", "image")
#: Largest component accepted, as compact JSON, in characters.
MAX_COMPONENT_CHARS = 64_000

Scalar = StrictStr | int | float | StrictBool | None

# (one optional "/" between the spaces: "<\s*/?\s*" backtracked quadratically on "<" and 60k spaces)
_TAG = re.compile(r"<\s*(?:/\s*)?[A-Za-z!?]|<\s*/\s*>|&#|&[A-Za-z]+;")
# A script URL anywhere in a string (an href inside html, a markdown link), once what browsers
# strip from URLs is gone: controls, whitespace ("java\tscript:", "\x01javascript:").
_URL_NOISE = re.compile(r"[\x00-\x20\x7f]+")
# (data: and file: only where they look like URLs, so that "Totals, data: 42" stays text)
_SCRIPT_URL = re.compile(r"(?<![a-z0-9+.\-])(?:(?:javascript|vbscript):|data:(?:[a-z]+/|[;,])|file:/)")


def _has_script_url(text: str) -> bool:
    return _SCRIPT_URL.search(_URL_NOISE.sub("", text).lower()) is not None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldItem(_Strict):
    """One ``label: value`` line of a card."""

    label: StrictStr = Field(max_length=200)
    value: Scalar = None


class Action(_Strict):
    """A button: run ``intent`` (through the host, with the caller's roles) with ``params``."""

    label: StrictStr = Field(max_length=100)
    intent: StrictStr = Field(pattern=_INTENT_NAME.pattern)  # the same rule as Intent.name
    params: dict[StrictStr, Any] = Field(default_factory=dict)


class Input(_Strict):
    """One input of a ``form``."""

    name: StrictStr = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    label: StrictStr = Field(max_length=200)
    kind: Literal["text", "number", "checkbox", "select", "date"] = "text"
    options: list[StrictStr] = Field(default_factory=list, max_length=100)
    required: StrictBool = False
    default: Scalar = None


class UIComponent(_Strict):
    """The UI component schema (see docs/ui-components.md).

    ``type`` decides which of the other fields are meaningful:

    - ``card``: ``title``, ``text``, ``fields``, ``actions``
    - ``table``: ``title``, ``columns``, ``rows`` (each row as long as ``columns``)
    - ``list``: ``title``, ``items``
    - ``form``: ``title``, ``inputs``, ``actions`` (the submit buttons)
    - ``text``: ``title``, ``text``
    - ``image``: ``url`` (``https://`` only), ``alt`` (required)
    """

    type: Literal["card", "table", "list", "form", "text", "image"]
    title: StrictStr | None = Field(None, max_length=200)
    text: StrictStr | None = Field(None, max_length=8000)
    fields: list[FieldItem] = Field(default_factory=list, max_length=50)
    columns: list[StrictStr] = Field(default_factory=list, max_length=20)
    rows: list[list[Scalar]] = Field(default_factory=list, max_length=500)
    items: list[StrictStr] = Field(default_factory=list, max_length=200)
    inputs: list[Input] = Field(default_factory=list, max_length=30)
    actions: list[Action] = Field(default_factory=list, max_length=10)
    url: StrictStr | None = Field(None, max_length=2000)
    alt: StrictStr | None = Field(None, max_length=300)
    html: StrictStr | None = Field(None, max_length=MAX_COMPONENT_CHARS)

    @model_validator(mode="after")
    def _check_shape(self) -> UIComponent:
        if self.type == "table":
            if not self.columns:
                raise ValueError("a table needs 'columns'")
            for i, row in enumerate(self.rows):
                if len(row) != len(self.columns):
                    raise ValueError(f"rows[{i}] has {len(row)} cells but there are {len(self.columns)} columns")
        if self.url is not None and not self.url.lower().startswith(("https://", "http://")):
            raise ValueError("'url' must be an absolute http:// or https:// URL")
        if self.type == "image":
            if not self.url or not self.url.lower().startswith("https://"):
                raise ValueError("an image needs an https:// 'url'")
            if not self.alt:
                raise ValueError("an image needs 'alt' text")
        if self.type == "form" and not self.inputs:
            raise ValueError("a form needs 'inputs'")
        return self


def ui_disabled_reason(settings: Settings, plugin_name: str, ui_trusted: bool | None = None) -> str | None:
    """Why ``plugin_name``'s UI hook will not be called, or ``None`` when it may be.

    ``ui_trusted`` overrides the operator setting read from ``settings``
    (the router passes what it resolved for the plugin).
    """
    if not settings.advanced_mode:
        return "ADVANCED_MODE is off: UI components are disabled (set ADVANCED_MODE=true to enable them)"
    trusted = settings.plugin(plugin_name).ui_trusted if ui_trusted is None else ui_trusted
    if not trusted:
        return (
            f"the operator has not granted UI trust to plugin {plugin_name!r} "
            f"(set ui_trusted = true under [plugins.{plugin_name}])"
        )
    return None


def _walk_strings(value: Any, path: str) -> Any:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_strings(k, f"{path}.<key>")
            yield from _walk_strings(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk_strings(v, f"{path}[{i}]")


def validate_component(data: Any, plugin: str, allow_html: bool = False) -> dict[str, Any] | None:
    """Validate a plugin's component; return it as clean JSON data (``None`` stays ``None``).

    Raises :class:`InvalidResult` naming the plugin and the problem when the
    data does not match :class:`UIComponent`, is larger than
    :data:`MAX_COMPONENT_CHARS`, or - unless ``allow_html`` - any string holds
    an HTML tag or entity, or a ``javascript:``/``vbscript:``/``data:``/
    ``file:`` URL, or the ``html`` field is used. Script URLs are refused even
    with ``allow_html``.
    """
    if data is None:
        return None
    try:
        size = len(json.dumps(data, separators=(",", ":")))
    except (TypeError, ValueError) as exc:
        raise InvalidResult(plugin, f"UI component is not JSON data: {exc}") from None
    except RecursionError:
        raise InvalidResult(plugin, "UI component nests too deeply") from None
    if size > MAX_COMPONENT_CHARS:
        raise InvalidResult(plugin, f"UI component is {size} characters of JSON, above the {MAX_COMPONENT_CHARS} cap")
    try:
        component = UIComponent.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'component'}: {e['msg']}" for e in exc.errors())
        raise InvalidResult(plugin, f"invalid UI component: {problems} (see docs/ui-components.md)") from None
    out = component.model_dump(mode="json", exclude_defaults=True)
    out["type"] = component.type
    for path, s in _walk_strings(out, "component"):
        if _has_script_url(s):
            raise InvalidResult(plugin, f"UI component {path} holds a script/data URL, which is never allowed")
        if not allow_html and _TAG.search(s):
            raise InvalidResult(
                plugin,
                f"UI component {path} contains HTML markup; raw HTML is refused unless the operator sets KAREN_ALLOW_UI_HTML",
            )
    if component.html is not None and not allow_html:
        raise InvalidResult(plugin, "UI component uses 'html', which needs the operator switch KAREN_ALLOW_UI_HTML")
    return out


async def call_host_hook(caller: Any, plugin: str, hook: str, **kwargs: Any) -> Any:
    """Call a trusted plugin's per-plugin ``hook`` in-host (awaiting it if async).

    Anything the plugin raises, other than a karen error, becomes a
    :class:`PluginError` naming the hook, with the plugin's traceback.
    """
    try:
        answer = getattr(caller.hook, hook)(**kwargs)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer
    except KarenError:
        raise
    except Exception as exc:  # noqa: BLE001 - the plugin's failure becomes a typed error
        raise PluginError(plugin, f"{hook}: {type(exc).__name__}: {exc}", traceback.format_exc()) from exc


@dataclass(frozen=True)
class UIComponentResult:
    """What ``PluginManager.ui_component`` returns.

    ``component`` is the validated component (``None`` when disabled or when
    the plugin had none); ``ui_disabled_reason`` says why the plugin's UI
    hook was not called (``None`` when it was).
    """

    plugin: str
    intent: str
    component: dict[str, Any] | None
    ui_disabled_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "intent": self.intent,
            "component": self.component,
            "ui_disabled_reason": self.ui_disabled_reason,
        }


async def ui_component_for(
    manager: Any, name: str, result: Any, user_ctx: Any, intent: str | None = None
) -> UIComponentResult:
    """``PluginManager.ui_component``: caller and roles first, then the trust gate, then the hook.

    When :func:`ui_disabled_reason` gives a reason the plugin's code is not
    run at all. Otherwise the hook runs in-host (trusted) or in the sandbox,
    and its answer goes through :func:`validate_component`.
    """
    user, info, it = manager._authorize(name, user_ctx, intent)
    settings: Settings = manager.settings
    reason = ui_disabled_reason(settings, info.name, info.ui_trusted or settings.plugin(info.name).ui_trusted)
    if reason is not None:
        return UIComponentResult(info.name, it.name, None, reason)
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    try:
        result = json.loads(json.dumps(result))
    except (TypeError, ValueError) as exc:
        raise InvalidResult(info.name, f"the result passed to ui_component is not JSON data: {exc}") from None
    except RecursionError:
        raise InvalidResult(info.name, "the result passed to ui_component nests too deeply") from None
    ctx = manager._context(user, info, it)
    caller = manager.router._hook_caller(info.name)
    if caller is not None:
        raw = await call_host_hook(caller, info.name, "karen_ui_component", intent=it.name, result=result, ctx=ctx)
    else:
        executor = manager.router.executor
        if executor is None:
            raise UntrustedPluginError(f"plugin {info.name!r} is untrusted and no sandbox is available")
        outcome = await executor.call(
            info.spec,
            "karen_ui_component",
            {"intent": it.name, "result": result, "ctx": ctx.to_json()},
            settings.plugin(info.name),
            settings.limits_for(info.name),
        )
        raw = outcome.result
    return UIComponentResult(info.name, it.name, validate_component(raw, info.name, settings.allow_ui_html), None)
