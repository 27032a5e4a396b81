"""Role-based access: who may call which intent.

A caller passes when they hold *any one* of the intent's required roles
(an empty list admits everyone). Roles are expanded through the operator's
``role_inheritance`` first; the default is ``{"admin": ["user"]}``, so an
admin may call every intent open to users. Operators override an intent's
required roles per plugin (``required_roles``) or per intent
(``intent_roles``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._config import Settings
from ._errors import AccessDenied
from ._models import Intent


def effective_roles(roles: Iterable[str], inheritance: Mapping[str, list[str]]) -> frozenset[str]:
    """The caller's roles plus every role they inherit, transitively (cycles are harmless)."""
    seen: set[str] = set()
    stack = list(roles)
    while stack:
        role = stack.pop()
        if role not in seen:
            seen.add(role)
            stack.extend(inheritance.get(role, ()))
    return frozenset(seen)


def required_roles(plugin: str, intent: Intent, settings: Settings) -> list[str]:
    """The roles the operator's config says this intent needs, else the plugin's own."""
    ps = settings.plugins.get(plugin)
    if ps is not None:
        if intent.name in ps.intent_roles:
            return ps.intent_roles[intent.name]
        if ps.required_roles is not None:
            return ps.required_roles
    return list(intent.required_roles)


def is_allowed(plugin: str, intent: Intent, roles: Iterable[str], settings: Settings) -> bool:
    needed = required_roles(plugin, intent, settings)
    return not needed or not effective_roles(roles, settings.role_inheritance).isdisjoint(needed)


def check_access(plugin: str, intent: Intent, roles: list[str], settings: Settings) -> None:
    """Raise :class:`AccessDenied` unless ``roles`` admit the caller to ``intent``."""
    if not is_allowed(plugin, intent, roles, settings):
        needed = required_roles(plugin, intent, settings)
        raise AccessDenied(
            f"plugin {plugin!r} intent {intent.name!r} needs one of the roles {needed}; "
            f"the caller has {sorted(roles)}"
        )
