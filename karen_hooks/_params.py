"""Validating a call's params against the intent's schema before any plugin code runs."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
from pydantic import BaseModel, ValidationError

from ._errors import InvalidParams
from ._jsondata import MAX_DATA_DEPTH, nesting
from ._models import Intent

_validators: dict[int, tuple[dict[str, Any], jsonschema.protocols.Validator]] = {}


def _schema_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    # Keyed by identity (with the schema kept alive beside it) so each intent's
    # schema is checked and compiled once, not on every call.
    hit = _validators.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    # An empty registry: a $ref resolves only inside the schema itself. Without one, jsonschema
    # fetches any other URI (file://, http://) from the host, for whoever wrote the schema.
    validator = cls(schema, registry=referencing.Registry())
    _validators[id(schema)] = (schema, validator)
    return validator


def validate_params(plugin: str, intent: Intent, params: Any) -> Any:
    """Return params ready for the plugin: a model instance, or a checked dict.

    Raises :class:`InvalidParams` naming the plugin, the intent and each bad field.
    """
    if params is None:
        params = {}
    if isinstance(params, BaseModel):
        params = params.model_dump(mode="json")
    if not isinstance(params, dict):
        raise InvalidParams(plugin, intent.name, [{"field": "params", "problem": f"must be an object, got {type(params).__name__}"}])
    # the same bound as a sandbox's replies: deeper params would hit Python's recursion limit
    # somewhere on their way (validation, encoding for the sandbox, templates), from any stack
    if nesting(params, MAX_DATA_DEPTH) > MAX_DATA_DEPTH:
        raise InvalidParams(plugin, intent.name, [{"field": "params", "problem": f"nest objects and arrays more than {MAX_DATA_DEPTH} deep"}])
    model = intent.params_model
    if model is not None:
        try:
            return model.model_validate(params)
        except ValidationError as exc:
            raise InvalidParams(
                plugin,
                intent.name,
                [{"field": ".".join(str(p) for p in e["loc"]) or "params", "problem": e["msg"]} for e in exc.errors()],
            ) from None
    schema = intent.params if isinstance(intent.params, dict) else None
    if schema is None:
        return params
    try:
        validator = _schema_validator(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidParams(plugin, intent.name, [{"field": "(schema)", "problem": f"the plugin's params schema is invalid: {exc.message}"}]) from None
    except RecursionError:
        raise InvalidParams(plugin, intent.name, [{"field": "(schema)", "problem": "the plugin's params schema nests too deeply to check"}]) from None
    except Exception as exc:  # noqa: BLE001 - jsonschema may fail in any way on a schema it cannot read
        raise InvalidParams(plugin, intent.name, [{"field": "(schema)", "problem": f"the plugin's params schema cannot be used: {type(exc).__name__}: {str(exc)[:200]}"}]) from None
    try:
        errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    except RecursionError:  # a recursive schema ($ref) walking params nested thousands deep
        raise InvalidParams(plugin, intent.name, [{"field": "params", "problem": "nest too deeply to check; send flatter params"}]) from None
    except referencing.exceptions.Unresolvable as exc:
        raise InvalidParams(plugin, intent.name, [{"field": "(schema)", "problem": (
            f"the plugin's params schema has a $ref to {str(getattr(exc, 'ref', ''))[:200]!r}, which is not in the "
            "schema; only refs inside it (#/$defs/...) resolve")}]) from None
    if errors:
        raise InvalidParams(
            plugin,
            intent.name,
            [{"field": ".".join(str(p) for p in e.absolute_path) or _missing_field(e) or "params", "problem": e.message} for e in errors],
        )
    return _with_defaults(schema, params)


def _with_defaults(schema: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Fill top-level ``default`` values, as the plugin's own pydantic model would.

    Untrusted plugins' models stay in the sandbox, so the host validates their
    JSON Schema; without this, a template rendered from ``params`` would miss
    the defaults that ``karen_run`` sees.
    """
    props = schema.get("properties")
    if not isinstance(props, dict):
        return params
    missing = {k: sub["default"] for k, sub in props.items() if k not in params and isinstance(sub, dict) and "default" in sub}
    return {**params, **copy.deepcopy(missing)} if missing else params


def _missing_field(err: jsonschema.ValidationError) -> str | None:
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [k for k in err.validator_value if k not in err.instance]
        return missing[0] if missing else None
    return None


def params_to_json(params: Any) -> dict[str, Any]:
    """The data form of validated params (what crosses into a sandbox)."""
    if isinstance(params, BaseModel):
        return params.model_dump(mode="json")
    return dict(params)
