"""Layers are applied in an order that works for a process without privileges.

Landlock may only be enforced by a process that has ``no_new_privs`` set or
holds CAP_SYS_ADMIN. A root host's children hold it until they switch uid, and
the zygote's seccomp filter (pyseccomp) sets ``no_new_privs`` as a side effect,
so a wrong order goes unnoticed there; a non-root host without seccomp would
fail every call. This applies the layers as such a host's child would: an
unprivileged uid, no seccomp filter, no ``no_new_privs`` beforehand.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from karen_hooks import Limits
from karen_hooks.sandbox import _layers
from karen_hooks.sandbox._child import ZygoteContext, apply_layers

from ._forked import as_uid_in_child

if os.geteuid() != 0:
    pytest.skip("drops to another uid in a forked child (needs root)", allow_module_level=True)
ABI = _layers.landlock_abi()
if ABI < 1:
    pytest.skip("the kernel has no Landlock", allow_module_level=True)

UID = GID = 64_323  # unused, like the other non-root tests'
PR_GET_NO_NEW_PRIVS = 39


def _apply_unprivileged(workdir: Path) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        nnp_before = _layers._libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
        ruleset, _ = _layers.landlock_ruleset(["/usr", "/proc/self"], [str(workdir)], ABI)
        z = ZygoteContext(None, ABI, -1, -1)
        cfg = {"workdir": str(workdir), "limits": Limits().model_dump(), "required": ["landlock"]}
        status = apply_layers(cfg, z, ruleset, strict=True, entered=True)
        out = {"nnp_before": nnp_before, "landlock": status["landlock"], "no_new_privs": status["no_new_privs"]}
        try:
            open("/etc/hostname").close()
            out["outside_readable"] = True
        except OSError:
            out["outside_readable"] = False
        return out

    return as_uid_in_child(UID, check)


def test_landlock_is_enforced_by_an_unprivileged_child_without_seccomp() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="karen-layer-order-"))  # pytest's tmp_path is root-only (0700)
    try:
        workdir.chmod(0o777)
        out = _apply_unprivileged(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert "error" not in out, out
    assert out["nnp_before"] == 0  # nothing had set no_new_privs: the order of the layers had to
    assert out["landlock"][0] is True, out
    assert out["no_new_privs"][0] is True
    assert out["outside_readable"] is False  # and Landlock really bites
