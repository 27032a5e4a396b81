"""`karen sandbox doctor`: every layer is reported, a missing one loudly."""

from __future__ import annotations

import logging

import pytest

from karen_hooks.sandbox import LayerStatus, SandboxExecutor, SandboxLayerWarning, doctor, format_doctor, report_layers
from karen_hooks.sandbox._doctor import LAYERS


def test_doctor_reports_every_layer():
    statuses = doctor()
    assert [s.name for s in statuses] == list(LAYERS)
    table = format_doctor(statuses)
    for s in statuses:
        assert s.name in table
    assert ("all layers active" in table) == all(s.active for s in statuses)


def test_format_doctor_flags_missing_layers():
    table = format_doctor([LayerStatus("seccomp", False, "pyseccomp unavailable"), LayerStatus("uid", True, "x")])
    assert "MISSING" in table and "WARNING: 1 layer(s) missing: seccomp" in table


def test_missing_layer_warns_loudly_at_startup(caplog, monkeypatch):
    from karen_hooks.sandbox import _executor

    monkeypatch.setattr(_executor, "_WARNED", set())
    ex = SandboxExecutor(slots=1)
    try:
        fake = {"session": [True, ""], "rlimits": [True, ""], "uid": [True, ""], "netns": [True, ""],
                "seccomp": [False, "pyseccomp unavailable (test)"], "subreaper": [True, ""]}
        with caplog.at_level(logging.WARNING, logger="karen_hooks.sandbox"), pytest.warns(SandboxLayerWarning) as rec:
            ex._set_layers(fake)
        assert any("seccomp" in str(w.message) for w in rec)
        assert any("seccomp" in r.getMessage() and "MISSING" in r.getMessage() for r in caplog.records)
        assert "seccomp" not in ex._required  # a missing layer is reported, not demanded of every child
    finally:
        ex.close()


def test_report_layers_logs_missing(caplog):
    with caplog.at_level(logging.WARNING, logger="karen_hooks.sandbox"):
        report_layers(statuses=[LayerStatus("netns", False, "no CAP_SYS_ADMIN")])
    assert "netns is MISSING" in caplog.text


def test_required_layers_fail_closed(executor, layers):
    """A layer reported active is demanded of every child: if it cannot be applied, the call fails."""
    if not layers["landlock_fs"].active:
        pytest.skip(f"Landlock unavailable: {layers['landlock_fs'].detail}")
    assert "landlock" in executor._required and "seccomp" in executor._required


def test_leftovers_of_a_killed_host_are_removed(tmp_path):
    """A host killed with SIGKILL cannot clean up; the next sandbox start removes what it left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from karen_hooks.sandbox import _executor

    if os.geteuid() != 0:
        pytest.skip("tmpfs work dirs and cgroups exist only when the host runs as root")
    repo = str(__import__("pathlib").Path(__file__).parents[2])
    script = (
        f"import sys, time; sys.path.insert(0, {repo!r})\n"
        "from tests.sandbox.conftest import run\n"
        "from karen_hooks.sandbox import SandboxExecutor\n"
        "ex = SandboxExecutor(slots=1); run(ex, 'echo')\n"
        "print(ex._base, *ex._cgroups.roots.values(), flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        paths = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert paths and all(os.path.exists(p) for p in paths)
    time.sleep(0.3)  # its zygote notices the host is gone and exits
    _executor._SWEPT = False
    ex = SandboxExecutor(slots=1)
    ex.close()
    assert not any(os.path.exists(p) for p in paths), paths


@pytest.mark.parametrize(("value", "problem"), [
    ("0", "root (0)"), ("-100", "negative uids"), ("500", "system accounts"), ("65530", "nobody (65534)"),
    ("abc", "must be a whole number"), (str(2**31 - 2), "past 2^31"),
])
def test_a_sandbox_uid_base_that_names_root_or_system_accounts_is_refused(monkeypatch, value, problem) -> None:
    """KAREN_SANDBOX_UID_BASE=0 ran slot 0 of every untrusted plugin as root; -100 turned the uid layer off."""
    from karen_hooks.sandbox._executor import _uid_base_from_env

    monkeypatch.setenv("KAREN_SANDBOX_UID_BASE", value)
    with pytest.raises(ValueError, match="KAREN_SANDBOX_UID_BASE") as ei:
        _uid_base_from_env(6)
    assert problem in str(ei.value)
    monkeypatch.setenv("KAREN_SANDBOX_UID_BASE", "70000")
    assert _uid_base_from_env(6) == 70000
