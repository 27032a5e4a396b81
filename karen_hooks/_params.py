"""Validating a call's params against the intent's schema before any plugin code runs."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
import regex
from pydantic import BaseModel, ValidationError

from ._errors import InvalidParams
from ._jsondata import MAX_DATA_DEPTH, nesting
from ._models import Intent

_validators: dict[int, tuple[dict[str, Any], jsonschema.protocols.Validator]] = {}

#: Wall time all of one call's ``pattern`` checks together may take. A plugin's schema
#: can hold a pattern that backtracks for minutes on a crafted string (``^(a|aa)+$``),
#: which Python's ``re`` cannot interrupt; ``regex`` can.
REGEX_BUDGET = 0.5
_budget = threading.local()


def _search(pattern: str, text: str) -> bool:
    remaining = getattr(_budget, "deadline", time.monotonic() + REGEX_BUDGET) - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return regex.search(pattern, text, timeout=remaining) is not None


def _slow(pattern: str) -> jsonschema.ValidationError:
    return jsonschema.ValidationError(f"could not be checked against the pattern {pattern[:80]!r} within "
                                      f"{REGEX_BUDGET} s; send a shorter value, or the plugin must simplify its pattern")


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string"):
        try:
            if not _search(pattern, instance):
                yield jsonschema.ValidationError(f"{instance[:200]!r} does not match {pattern!r}")
        except TimeoutError:
            yield _slow(pattern)
        except regex.error as exc:
            yield jsonschema.ValidationError(f"the schema's pattern {pattern!r} is not a valid regular expression: {exc}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            try:
                matched = _search(pattern, key)
            except TimeoutError:
                yield _slow(pattern)
                return
            except regex.error as exc:
                yield jsonschema.ValidationError(f"the schema's pattern {pattern!r} is not a valid regular expression: {exc}")
                return
            if matched:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


_ADDITIONAL = jsonschema.Draft202012Validator.VALIDATORS["additionalProperties"]


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Any:
    # jsonschema matches the property names against patternProperties with re: bounded here too
    patterns = schema.get("patternProperties")
    if not patterns or not validator.is_type(instance, "object"):
        yield from _ADDITIONAL(validator, additional, instance, schema)
        return
    known = schema.get("properties", {})
    extras = []
    for key in instance:
        if key in known:
            continue
        try:
            if not any(_search(p, key) for p in patterns):
                extras.append(key)
        except (TimeoutError, regex.error):
            yield _slow("|".join(patterns))
            return
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        verb = "does" if len(extras) == 1 else "do"
        yield jsonschema.ValidationError(f"{', '.join(repr(e) for e in sorted(extras))} {verb} not match any of the "
                                         f"regexes: {', '.join(repr(p) for p in sorted(patterns))}")


def _canonical(value: Any) -> Any:
    """JSON Schema equality as something hashable: 1 == 1.0, true != 1, objects by members."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, (int, float)):
        return ("number", int(value) if isinstance(value, float) and value.is_integer() else value)
    if isinstance(value, dict):
        return ("object", frozenset((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", tuple(_canonical(v) for v in value))
    return ("other", repr(value))


def _unique_items(validator: Any, unique: bool, instance: Any, schema: Any) -> Any:
    # jsonschema compares unhashable items pairwise: 4,000 small objects took 26 s; this is linear
    if unique and validator.is_type(instance, "array"):
        seen: set[Any] = set()
        for item in instance:
            key = _canonical(item)
            if key in seen:
                yield jsonschema.ValidationError(f"{str(instance)[:200]} has non-unique elements")
                return
            seen.add(key)


_BOUNDED = {"pattern": _pattern, "patternProperties": _pattern_properties, "uniqueItems": _unique_items,
            "additionalProperties": _additional_properties}
_bounded_classes: dict[type, Any] = {}


def _schema_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    # Keyed by identity (with the schema kept alive beside it) so each intent's
    # schema is checked and compiled once, not on every call.
    hit = _validators.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    base.check_schema(schema)
    cls = _bounded_classes.get(base)
    if cls is None:
        cls = _bounded_classes[base] = jsonschema.validators.extend(base, _BOUNDED)
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
    _budget.deadline = time.monotonic() + REGEX_BUDGET
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
