"""CgroupSlot against the files of the cgroup interface: what it writes, reads and kills.

A slot whose process list cannot be read is never taken for an empty one.

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
    assert slot.pids() is None


def test_an_empty_process_list_is_an_empty_slot(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("")
    slot = CgroupSlot({"pids": str(tmp_path)}, v2=False)
    assert slot.kill_all(timeout=0.05) is True
    assert slot.kill_once() is True
    assert slot.kill_others(keep=1) is True
    assert slot.pids() == set()


def _fake_v2(tmp_path: Path) -> Path:
    """The files of a cgroup v2 directory with the memory and pids controllers, as plain files."""
    for name, text in {
        "cgroup.procs": "",
        "cgroup.kill": "",
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        "pids.max": "max\n",
        "pids.events": "max 0\n",
    }.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_cgroup_v2_limits_are_written_and_limit_hits_are_told_apart(tmp_path: Path) -> None:
    # This machine runs cgroup v1; the v2 code is checked against the v2 interface's files.
    d = str(_fake_v2(tmp_path))
    slot = CgroupSlot({"memory": d, "pids": d}, v2=True)
    slot.configure(256 << 20, 32)
    assert (tmp_path / "memory.max").read_text() == str(256 << 20)
    assert (tmp_path / "memory.swap.max").read_text() == "0"  # no escaping the limit into swap
    assert (tmp_path / "pids.max").read_text() == "32"
    assert slot.hit() == set()
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n")
    assert slot.hit() == {"memory"}
    (tmp_path / "pids.events").write_text("max 5\n")
    assert slot.hit() == {"memory", "pids"}
    slot.configure(256 << 20, 32)  # the next call counts from here
    assert slot.hit() == set()


def test_cgroup_v2_kill_uses_cgroup_kill(tmp_path: Path) -> None:
    d = str(_fake_v2(tmp_path))
    slot = CgroupSlot({"memory": d, "pids": d}, v2=True)
    assert slot.kill_all(timeout=0.05) is True
    assert (tmp_path / "cgroup.kill").read_text() == "1"


def test_cgroup_v1_limits_are_written_once_per_change(tmp_path: Path) -> None:
    mem, pids = tmp_path / "memory", tmp_path / "pids"
    mem.mkdir()
    pids.mkdir()
    for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
        (mem / name).write_text("9223372036854771712\n")
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (pids / "pids.max").write_text("max\n")
    (pids / "pids.events").write_text("max 0\n")
    slot = CgroupSlot({"memory": str(mem), "pids": str(pids)}, v2=False)
    assert slot.has_memsw
    slot.configure(128 << 20, 16)
    assert (mem / "memory.limit_in_bytes").read_text() == str(128 << 20)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(128 << 20)  # memory + swap: no swap
    assert (pids / "pids.max").read_text() == "16"
    (pids / "pids.max").write_text("untouched")
    slot.configure(128 << 20, 16)  # same limits: v1 writes are slow, nothing is rewritten
    assert (pids / "pids.max").read_text() == "untouched"
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert slot.hit() == {"memory"}
