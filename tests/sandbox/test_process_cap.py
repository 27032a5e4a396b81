"""Which RLIMIT_NPROC a sandbox child sets, and when it sets none (it must never count the host's processes)."""

from __future__ import annotations

import pytest

from karen_hooks.sandbox._child import ZygoteContext, _process_cap
from karen_hooks.sandbox._layers import nproc_counted_per_userns

CFG = {"limits": {"processes": 32}, "userns_processes": 41}


def zygote(nproc_in_userns: bool) -> ZygoteContext:
    z = ZygoteContext(None, 0, -1, -1)
    z.nproc_in_userns = nproc_in_userns
    return z


def test_dedicated_uid_gets_the_per_call_limit() -> None:
    cap, detail = _process_cap(CFG, zygote(False), dedicated=True)
    assert cap == 32 and "per slot uid" in detail


def test_zygote_user_namespace_gets_the_shared_cap() -> None:
    cap, detail = _process_cap(CFG, zygote(True), dedicated=False)
    assert cap == 41 and "RLIMIT_NPROC 41" in detail and "shared by all calls" in detail


def test_a_user_namespace_per_slot_gets_the_per_call_limit() -> None:
    z = zygote(True)
    z.slot_userns = {0: 5, 1: 6}
    cap, detail = _process_cap(CFG, z, dedicated=False)
    assert cap == 33 and "RLIMIT_NPROC 33 per call" in detail and "slot's own user namespace" in detail


def test_without_slot_namespaces_the_shared_cap_says_why() -> None:
    z = zygote(True)
    z.slot_userns_problem = "no user namespace for a slot: limit reached"
    cap, detail = _process_cap(CFG, z, dedicated=False)
    assert cap == 41 and "limit reached" in detail


def test_neither_sets_no_cap_and_says_so() -> None:
    cap, detail = _process_cap(CFG, zygote(False), dedicated=False)
    assert cap == 0 and "no process count" in detail


@pytest.mark.parametrize(("release", "per_userns"), [
    ("6.18.44-fc-v595", True), ("5.14.0-rc1", True), ("5.13.19", False), ("4.19.0-27-amd64", False),
    ("10.0", True), ("garbage", False),
])
def test_per_namespace_counting_is_a_5_14_kernel_feature(release: str, per_userns: bool) -> None:
    # before 5.14 RLIMIT_NPROC counts the uid machine-wide: a cap would count the host's own processes
    assert nproc_counted_per_userns(release) is per_userns
