"""Data the host passes around: intents, callers, plugin descriptions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from ._errors import InvalidUserContext
from ._jsondata import nesting

_INTENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Objects and arrays a params schema may nest: a schema comes from the plugin, and the
#: host's JSON Schema checks recurse once (or more) per level.
MAX_SCHEMA_DEPTH = 64


def _keywords(schema: Any) -> set[str]:
    """Every key of every object in ``schema`` (bounded by its depth check before)."""
    keys: set[str] = set()
    stack = [schema]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            keys.update(k for k in v if isinstance(k, str))
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return keys


class Intent(BaseModel):
    """One thing a plugin can do. ``params`` is a pydantic model class or a JSON Schema dict."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    name: StrictStr
    description: StrictStr = ""
    examples: list[StrictStr] = Field(default_factory=list)
    required_roles: list[StrictStr] = Field(default_factory=list)
    params: Any = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _INTENT_NAME.match(v):
            raise ValueError(
                "must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return v

    @field_validator("params")
    @classmethod
    def _check_params(cls, v: Any) -> Any:
        if v is None or isinstance(v, dict):
            if isinstance(v, dict) and v.get("type", "object") != "object":
                raise ValueError('a JSON Schema for params must describe an object ("type": "object")')
            if v is not None and not isinstance(v.get("$schema", ""), str):
                raise ValueError('"$schema" must be a string: the URI of a JSON Schema dialect')
            if v is not None and nesting(v, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
                raise ValueError(f"the JSON Schema nests objects and arrays more than {MAX_SCHEMA_DEPTH} deep; "
                                 "flatten it (or use $defs and $ref)")
            if v is not None and {"unevaluatedProperties", "patternProperties"} <= _keywords(v):
                # jsonschema matches patternProperties for unevaluatedProperties with re, outside the
                # time budget the host gives every other pattern check (see _params)
                raise ValueError("a params schema may not combine unevaluatedProperties with patternProperties; "
                                 "use additionalProperties instead")
            return v
        if isinstance(v, type) and issubclass(v, BaseModel):
            return v
        raise ValueError("must be a pydantic model class, a JSON Schema dict, or omitted")

    @property
    def params_model(self) -> type[BaseModel] | None:
        return self.params if isinstance(self.params, type) else None

    def params_schema(self) -> dict[str, Any]:
        """The JSON Schema of this intent's params (an empty object schema when none)."""
        if self.params is None:
            return {"type": "object", "properties": {}}
        if isinstance(self.params, dict):
            return self.params
        return self.params.model_json_schema()

    def to_json(self) -> dict[str, Any]:
        """A data-only form: params become their JSON Schema."""
        return {
            "name": self.name,
            "description": self.description,
            "examples": list(self.examples),
            "required_roles": list(self.required_roles),
            "params": self.params_schema() if self.params is not None else None,
        }


class _UserContextSchema(BaseModel):
    """The rules for ``user_ctx``; used for the exact error messages when the fast check fails."""

    model_config = ConfigDict(extra="allow")

    user_id: StrictStr = Field(min_length=1)
    roles: list[StrictStr] = Field(default_factory=list)
    tenant_id: StrictStr | None = None


_new_object = object.__new__


@dataclass(frozen=True)
class UserContext:
    """The validated caller: who is asking, with which roles, for which tenant.

    A plain frozen dataclass rather than a pydantic model because it is built
    on every call; :meth:`parse` validates with the same rules either way.
    Other keys of ``user_ctx`` are ignored: nothing but these three is trusted.
    """

    user_id: str
    roles: list[str] = field(default_factory=list)
    tenant_id: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> UserContext:
        """Validate a ``user_ctx`` mapping; raise :class:`InvalidUserContext` naming each bad field."""
        if isinstance(raw, UserContext):
            # built directly by the application, not through parse: checked by the same rules
            # (roles={"ops": False} would otherwise grant "ops", and "ops" the roles o, p, s)
            roles = raw.roles
            if (type(raw.user_id) is str and raw.user_id and type(roles) is list
                    and all(type(r) is str for r in roles)
                    and (raw.tenant_id is None or type(raw.tenant_id) is str)):
                return raw
            raw = {"user_id": raw.user_id, "roles": roles, "tenant_id": raw.tenant_id}
        if type(raw) is dict:  # the fast check: the common well-formed dict
            uid, roles, tenant = raw.get("user_id"), raw.get("roles", []), raw.get("tenant_id")
            if type(uid) is str and uid and type(roles) is list and (tenant is None or type(tenant) is str):
                for r in roles:  # a loop, not all(<generator>): a generator costs more than a few roles
                    if type(r) is not str:
                        break
                else:
                    # Filled in directly, without the generated __init__ (three object.__setattr__
                    # calls, as a frozen dataclass must): the values were just checked.
                    ctx = _new_object(cls)
                    ctx.__dict__.update(user_id=uid, roles=list(roles), tenant_id=tenant)
                    return ctx
        if not isinstance(raw, dict):
            raise InvalidUserContext(
                f"user_ctx must be a dict like {{'user_id': '123', 'roles': ['user']}}, got {type(raw).__name__}"
            )
        try:
            checked = _UserContextSchema.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'user_ctx'}: {e['msg']}" for e in exc.errors())
            raise InvalidUserContext(
                f"invalid user_ctx: {problems} (expected user_id: non-empty str, roles: list of str, tenant_id: str)"
            ) from None
        return cls(checked.user_id, list(checked.roles), checked.tenant_id)


@dataclass(frozen=True)
class PluginSpec:
    """Where a plugin's code lives. Data only, so it can be sent to a sandbox.

    ``kind`` is ``"entry_point"`` (``target`` is the entry point value,
    ``module`` or ``module:attr``) or ``"directory"`` (``path`` is the plugin
    folder holding ``handler.py``; ``target`` is the module file name).
    ``code_paths`` are the directories the plugin's code is read from (the
    sandbox makes them readable, nothing else of the host's files).
    """

    name: str
    kind: Literal["entry_point", "directory"]
    target: str
    distribution: str | None = None
    version: str | None = None
    path: str | None = None
    code_paths: tuple[str, ...] = ()


@dataclass
class PluginInfo:
    """What the router knows about one loaded plugin."""

    name: str
    spec: PluginSpec
    intents: list[Intent]
    trusted: bool
    sandboxed: bool
    ui_trusted: bool = False
    category: str | None = None
    prompt: str | None = None  # directory plugins: manifest prompt / prompt.txt
    manifest: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def distribution(self) -> str | None:
        return self.spec.distribution

    @property
    def version(self) -> str | None:
        return self.spec.version

    def intent(self, name: str) -> Intent | None:
        for it in self.intents:
            if it.name == name:
                return it
        return None


@dataclass(frozen=True)
class LoadProblem:
    """A plugin that was reported and skipped at discovery."""

    plugin: str
    reason: str
    distribution: str | None = None


@dataclass
class PluginContext:
    """The ``ctx`` a plugin receives: the caller, the intent, and tenant-scoped memory."""

    user_id: str
    tenant_id: str | None
    roles: list[str]
    intent: str
    plugin: str
    memory: Any = None

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "tenant_id": self.tenant_id,
            "roles": list(self.roles),
            "intent": self.intent,
            "plugin": self.plugin,
        }
