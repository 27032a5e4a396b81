"""A cgroup slot whose process list cannot be read is never taken for an empty one.

If the host cannot read ``cgroup.procs`` (out of descriptors, the cgroup removed
under it), treating that as "no process left" would free the slot with a call's
process still alive. These run on plain files standing in for the cgroup, so
they need neither root nor cgroups.
"""

from __future__ import annotations

from pathlib import Path

from karen_hooks.sandbox._host_layers import CgroupSlot


def test_an_unreadable_process_list_is_not_an_empty_slot(tmp_path: Path) -> None:
    slot = CgroupSlot({"pids": str(tmp_path)}, v2=False)  # no cgroup.procs in it: every read fails
    assert slot.kill_all(timeout=0.05) is False
    assert slot.kill_once() is False
    assert slot.kill_others(keep=1) is False


def test_an_empty_process_list_is_an_empty_slot(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("")
    slot = CgroupSlot({"pids": str(tmp_path)}, v2=False)
    assert slot.kill_all(timeout=0.05) is True
    assert slot.kill_once() is True
    assert slot.kill_others(keep=1) is True
    assert slot.pids() == set()
