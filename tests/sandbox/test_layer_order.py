"""Layers are applied in an order that works for a process without privileges.

Landlock may only be enforced by a process that has ``no_new_privs`` set or
holds CAP_SYS_ADMIN. A root host's children hold it until they switch uid, and
the zygote's seccomp filter (pyseccomp) sets ``no_new_privs`` as a side effect,
so a wrong order goes unnoticed there; a non-root host without seccomp would
fail every call. This applies the layers as such a host's child would: an
unprivileged uid, no seccomp filter, no ``no_new_privs`` beforehand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from karen_hooks.sandbox import _layers

if os.geteuid() != 0:
    pytest.skip("drops to another uid (needs root)", allow_module_level=True)
ABI = _layers.landlock_abi()
if ABI < 1:
    pytest.skip("the kernel has no Landlock", allow_module_level=True)

UID = GID = 64_323  # unused, like the other non-root tests'

# In a fresh ``python -I`` (a fork of the multi-threaded test process could deadlock), imports
# done as root, then as an unused uid: the layers applied as a non-root host's child would.
_CHECK = r"""
import json, os, sys
from karen_hooks import Limits
from karen_hooks.sandbox import _layers
from karen_hooks.sandbox._child import ZygoteContext, apply_layers

uid, workdir, abi = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = {"workdir": workdir, "limits": Limits().model_dump(), "required": ["landlock"]}
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
out = {"nnp_before": _layers._libc.prctl(39, 0, 0, 0, 0)}  # PR_GET_NO_NEW_PRIVS
ruleset, _ = _layers.landlock_ruleset(["/usr", "/proc/self"], [workdir], abi)
status = apply_layers(cfg, ZygoteContext(None, abi, -1, -1), ruleset, strict=True, entered=True)
out.update(landlock=status["landlock"], no_new_privs=status["no_new_privs"])
try:
    open("/etc/hostname").close()
    out["outside_readable"] = True
except OSError:
    out["outside_readable"] = False
print(json.dumps(out))
"""


def _apply_unprivileged(workdir: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-I", "-c", _CHECK, str(UID), str(workdir), str(ABI)],
                          capture_output=True, text=True, env={}, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout))


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
