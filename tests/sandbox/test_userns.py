"""The zygote's network namespace for a host that is not root, in a fresh interpreter.

A fresh ``python -I`` (as the real zygote is exec'd; a fork of the test process would carry
at-fork hooks of libraries the suite loaded, which may start threads, and a process with
threads cannot enter a user namespace) imports what it needs as root, drops to an unused
uid (as a non-root host would be) and calls what the zygote calls when
``unshare(CLONE_NEWNET)`` fails. Both outcomes are checked: the namespaces
with no capabilities left, and, when the setup cannot be finished (a process that is not
dumpable may not write its own ``uid_map``), a reported reason with the process unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from karen_hooks.sandbox import _zygote

if os.geteuid() != 0:
    pytest.skip("drops to another uid; the non-root host is covered by test_nonroot_host", allow_module_level=True)
if not os.path.exists("/proc/self/ns/user"):
    pytest.skip("the kernel has no user namespaces", allow_module_level=True)

UID = GID = 64_322  # unused, like test_nonroot_host's
DIRECT = OSError(1, "unshare(CLONE_NEWNET): Operation not permitted")


_CHECK = r"""
import ctypes, json, os, sys
from karen_hooks.sandbox import _userns, _zygote  # imported as root: the uid below may not read them

uid, dumpable, tmpfs = int(sys.argv[1]), sys.argv[2] == "1", json.loads(sys.argv[3])
before = os.readlink("/proc/self/ns/net")
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)  # clears "dumpable", as a uid change does
if dumpable:  # as after an execve, which the real zygote is
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
status = {}
print(json.dumps({
    "status": _zygote._userns_netns(OSError(1, "unshare(CLONE_NEWNET): Operation not permitted"), tmpfs, status),
    "workdir_quota": status.get("workdir_quota"),
    "moved": os.readlink("/proc/self/ns/net") != before,
    "caps": _userns.capabilities(),
    "ids": [os.getuid(), os.getgid()],
}))
"""


def _in_child(dumpable: bool, tmpfs: list[Any] | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-I", "-c", _CHECK, str(UID), "1" if dumpable else "0", json.dumps(tmpfs)],
                          capture_output=True, text=True, env={}, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout))


def test_network_namespace_in_a_user_namespace_without_capabilities() -> None:
    got = _in_child(dumpable=True)
    assert "error" not in got, got
    active, detail = got["status"]
    if not active:
        pytest.skip(f"no unprivileged user namespace on this machine: {detail}")
    assert "unprivileged user namespace" in detail and f"uid {UID}" in detail
    assert got["moved"] and got["ids"] == [UID, GID]
    assert got["caps"]["CapEff"] == 0 and got["caps"]["CapPrm"] == 0, got["caps"]
    assert all(v == 0 for v in got["caps"].values()), got["caps"]


def test_a_work_dir_tmpfs_that_cannot_be_mounted_costs_only_that_layer() -> None:
    # the mount point does not exist: the zygote goes on with its network namespace, and says why
    got = _in_child(dumpable=True, tmpfs=[["/nonexistent-karen-slot0"], 64, 4096])
    if not got["status"][0]:
        pytest.skip(f"no unprivileged user namespace on this machine: {got['status'][1]}")
    active, detail = got["workdir_quota"]
    assert not active and "/nonexistent-karen-slot0" in detail, detail
    assert got["moved"] and all(v == 0 for v in got["caps"].values()), got


def test_a_setup_that_cannot_be_finished_is_reported_and_changes_nothing() -> None:
    got = _in_child(dumpable=False)
    assert "error" not in got, got  # the zygote would go on, without the layer
    active, detail = got["status"]
    assert not active
    assert detail.startswith("[Errno 1] unshare(CLONE_NEWNET): Operation not permitted; and no unprivileged user "
                             "namespace to create one in: "), detail
    assert "setgroups" in detail or "unshare(CLONE_NEWUSER" in detail, detail  # says why
    assert not got["moved"]  # the attempt ran in a throwaway child


def test_root_keeps_the_plain_network_namespace() -> None:
    # a root zygote never enters a user namespace: its children must switch to their dedicated uids
    assert _zygote._userns_netns(DIRECT) == [False, str(DIRECT)]
