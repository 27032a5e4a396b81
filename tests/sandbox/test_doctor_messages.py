"""What `karen sandbox doctor` says when a Landlock layer is not active."""

from __future__ import annotations

from types import SimpleNamespace

from karen_hooks.sandbox._doctor import statuses_from

CG = SimpleNamespace(active=False, problem="read-only", v2=False, roots={})


def detail(child: dict, name: str) -> str:
    return next(s.detail for s in statuses_from(child, CG, False, "no tmpfs") if s.name == name)


def test_old_kernel_abi_is_named() -> None:
    child = {"landlock_abi": [True, "3"], "landlock_fs": [True], "landlock_net": [False]}
    assert detail(child, "landlock_net") == "kernel Landlock ABI 3 < 4"


def test_new_enough_kernel_but_failed_ruleset_is_not_called_too_old() -> None:
    child = {"landlock_abi": [True, "7"], "landlock": [False, "EPERM from landlock_restrict_self"], "landlock_fs": [False]}
    assert detail(child, "landlock_fs") == "Landlock ABI 7 but the layer could not be applied: EPERM from landlock_restrict_self"


def test_no_landlock() -> None:
    child = {"landlock_abi": [False, "0"], "landlock": [False, "ENOSYS"]}
    assert detail(child, "landlock_scope") == "Landlock unavailable: ENOSYS"
