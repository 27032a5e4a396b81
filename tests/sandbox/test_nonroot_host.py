"""The real host + sandbox run by an unprivileged user (the non-root code paths).

This machine's suite runs as root, so the non-root paths (no dedicated uid per
slot, no cgroup, no tmpfs work dir, the network namespace inside an
unprivileged user namespace) would otherwise never run. From the root test process we start a
driver script as an unused, unprivileged uid/gid with no supplementary groups
and no capabilities; it builds a ``SandboxExecutor`` and a ``PluginManager``,
runs the hostile plugin's attacks and prints JSON that the tests assert on.

When the suite itself runs unprivileged, the whole of ``tests/sandbox``
already exercises these paths, so this module is skipped.

Python may live under a directory the unprivileged uid cannot traverse (here
pyenv in a ``0700`` ``/root``). Then the driver is started in a private mount
namespace in which a ``0755`` tmpfs covers that directory and only the Python
installation is bind-mounted back at the same path: the unprivileged host can
run the same interpreter, nothing else of ``/root`` is visible, and the rest of
the machine is unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from .conftest import PLUGINS, alive, localhost_listeners

if os.geteuid() != 0:
    pytest.skip("the suite runs unprivileged already: every sandbox test exercises the non-root host",
                allow_module_level=True)

UID = GID = 64_321  # unused: no process, no file and no passwd entry; 61000+ are the sandbox's slot uids
REPO = Path(__file__).resolve().parents[2]
SECRET = "n0nr00t-s3cr3t-value"

# Run as root in the child before it becomes the unprivileged host: an optional private mount
# namespace that re-exposes Python under a tmpfs covering its 0700 ancestor, then drop to UID/GID.
_BOOT = r"""
import ctypes, json, os, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno(); raise OSError(e, f"{what}: {os.strerror(e)}")
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
if cfg["cover"]:
    check(libc.unshare(0x00020000), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None), "make / private")
    for i, (blocked, keep) in enumerate(cfg["cover"]):
        stage = os.path.join(cfg["stage"], str(i))
        os.mkdir(stage)
        check(libc.mount(keep.encode(), stage.encode(), None, ctypes.c_ulong(MS_BIND | MS_REC), None), "bind")
        check(libc.mount(b"tmpfs", blocked.encode(), b"tmpfs", ctypes.c_ulong(0), b"size=1m,mode=0755"), "tmpfs")
        os.makedirs(keep, 0o755)
        check(libc.mount(stage.encode(), keep.encode(), None, ctypes.c_ulong(MS_BIND | MS_REC), None), "bind back")
os.setgroups([])
os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
"""


def _blocked_ancestor(path: str) -> str | None:
    """The topmost directory above ``path`` that others cannot traverse, if any."""
    parts = os.path.abspath(path).split("/")
    for i in range(2, len(parts)):
        p = "/".join(parts[:i])
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return p
    return None


def _readable_by_others(path: str) -> bool:
    st = os.stat(path)
    return bool(st.st_mode & stat.S_IROTH) and (not stat.S_ISDIR(st.st_mode) or bool(st.st_mode & stat.S_IXOTH))


def _processes_of(uid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid and alive(int(entry)):
                    out.append(int(entry))
            except OSError:
                continue
    return out


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """Run the driver once as the unprivileged uid; every test asserts on a part of its JSON."""
    if _processes_of(UID):
        pytest.skip(f"uid {UID} already runs processes here; pick another unused uid")
    python = sys.executable
    # the interpreter (through the venv's symlink), the venv and the repository must be readable by others
    need = [os.path.realpath(python), sys.base_prefix, sys.prefix, str(REPO)]
    cover: list[list[str]] = []
    for p in need:
        blocked = _blocked_ancestor(p)
        if blocked is None:
            continue
        if p != sys.base_prefix and os.path.realpath(python) != p:
            pytest.skip(f"{p} is under {blocked}, which an unprivileged uid cannot traverse")
        if [blocked, sys.base_prefix] not in cover:
            cover.append([blocked, sys.base_prefix])
    for p in (sys.base_prefix, sys.prefix, str(REPO), str(REPO / "karen_hooks"), str(PLUGINS / "hostile")):
        if not _readable_by_others(p):
            pytest.skip(f"{p} is not readable by an unprivileged uid")
    for blocked, _keep in cover:
        if blocked in ("/", "/tmp", "/proc", "/sys", "/dev", "/work") or str(REPO).startswith(blocked + "/"):
            pytest.skip(f"cannot cover {blocked} with a tmpfs for the unprivileged host")

    work = tempfile.mkdtemp(prefix="karen-nonroot-")
    try:
        os.chmod(work, 0o755)
        plugins = os.path.join(work, "plugins")
        shutil.copytree(PLUGINS / "hostile", os.path.join(plugins, "hostile"))
        os.makedirs(os.path.join(work, "stage"))
        outside = os.path.join(work, "outside")  # only the sandbox layers stand between a plugin and this dir
        os.mkdir(outside)
        os.chmod(outside, 0o777)
        for root, dirs, files in os.walk(plugins):
            for n in dirs:
                os.chmod(os.path.join(root, n), 0o755)
            for n in files:
                os.chmod(os.path.join(root, n), 0o644)
        os.chmod(plugins, 0o755)
        driver = os.path.join(work, "driver.py")
        shutil.copy(Path(__file__).with_name("nonroot_driver.py"), driver)
        os.chmod(driver, 0o644)
        tcp, udp = localhost_listeners(udp_timeout=0)
        helper_dir = os.path.join(work, "helper")  # where the driver's namespace-only child creates a file
        os.mkdir(helper_dir)
        os.chmod(helper_dir, 0o777)
        cfg = {"plugins": plugins, "target": os.path.join(outside, "pwned.txt"), "tcp_port": tcp.getsockname()[1],
               "udp_port": udp.getsockname()[1], "helper_dir": helper_dir}
        boot = {
            "uid": UID, "gid": GID, "cover": cover, "stage": os.path.join(work, "stage"),
            "argv": [python, driver, json.dumps(cfg)],
            "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "KAREN_TEST_SECRET": SECRET,
                    "KAREN_MEMORY_URL": "memory://"},
        }
        try:
            proc = subprocess.run([python, "-I", "-c", _BOOT, json.dumps(boot)], capture_output=True, text=True,
                                  timeout=120, env={}, cwd=work)
            try:
                tcp.accept()
                connected = True
            except OSError:  # socket.timeout: nobody connected
                connected = False
            try:
                udp.recv(65536)
                received = True
            except BlockingIOError:
                received = False
        finally:
            tcp.close()
            udp.close()
        assert proc.returncode == 0, proc.stderr[-4000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["_tcp_connected"] = connected
        out["_udp_received"] = received
        out["_target_exists"] = os.path.exists(cfg["target"])
        out["_left_over"] = _processes_of(UID)  # after the host exited
        return out
    finally:
        for pid in _processes_of(UID):  # never leave anything behind, whatever the outcome
            os.kill(pid, 9)
        shutil.rmtree(work, ignore_errors=True)


def _attack(report: dict[str, Any], name: str) -> dict[str, Any]:
    r = report["attacks"][name]
    assert "error" not in r or r.get("expected_error"), r
    return r


def test_driver_ran_unprivileged(report):
    assert report["host"]["uid"] == UID and report["host"]["euid"] == UID
    assert report["host"]["groups"] == [] and report["host"]["cap_eff"] == 0
    echo = _attack(report, "echo")["result"]
    assert echo["uid"] == UID and echo["env"] == {} and echo["pid"] != report["host"]["pid"]


def test_doctor_marks_root_only_layers_inactive_with_a_reason(report):
    layers = report["layers"]
    for name in ("uid", "cgroup_memory", "cgroup_pids"):
        active, detail = layers[name]
        assert not active, (name, detail)
        assert detail and detail != "not reported", name
    assert "not root" in layers["uid"][1]
    # what the missing cgroup means is spelled out, not just the errno
    assert "double-fork" in layers["cgroup_pids"][1] and "RLIMIT_AS" in layers["cgroup_memory"][1]
    # RLIMIT_NPROC counts every process of the host's uid: it is not set, and the report says so
    assert layers["rlimits"][0] and "RLIMIT_NPROC" in layers["rlimits"][1]
    # the doctor (`karen sandbox doctor`) tells the same story as the executor
    assert {n: a for n, (a, _d) in report["doctor"].items()} == {n: a for n, (a, _d) in layers.items()}
    assert "MISSING" in report["doctor_table"] and "uid" in report["doctor_table"]


def test_startup_warns_loudly_naming_each_missing_layer(report):
    missing = [n for n, (active, _detail) in report["layers"].items() if not active]
    assert {"uid", "cgroup_memory", "cgroup_pids"} <= set(missing)
    for name in missing:
        assert any(f"layer {name} is MISSING" in msg for lvl, msg in report["log"] if lvl == "WARNING"), name
        assert any(cat == "SandboxLayerWarning" and f"'{name}'" in msg for cat, msg in report["warnings"]), name


def test_unprivileged_layers_remain_active(report):
    """Landlock, seccomp, rlimits, the exec'd zygote and the subreaper need no root."""
    layers = report["layers"]
    for name in ("exec_zygote", "session", "rlimits", "seccomp", "subreaper"):
        assert layers[name][0], (name, layers[name])
    if not layers["landlock_fs"][0]:
        pytest.skip(f"Landlock is unavailable here: {layers['landlock_fs'][1]}")
    assert report["required"] == sorted(["rlimits", "seccomp", "landlock", "no_new_privs"] +
                                        (["netns"] if layers["netns"][0] else []))


def _need(report: dict[str, Any], *names: str) -> None:
    for n in names:
        active, detail = report["layers"][n]
        if not active:
            pytest.skip(f"sandbox layer {n} is not available to the unprivileged host: {detail}")


def test_host_env_and_proc_secrets(report):
    r = _attack(report, "secrets")["result"]
    assert r["env"] == {} and SECRET not in json.dumps(r)
    # the attack is real: the same uid outside the sandbox reads the host's environ
    assert report["control"]["environ_readable_by_same_uid"]
    _need(report, "landlock_fs")
    for key in ("proc_environ", "proc_mem", "proc_cmdline"):
        assert not r[key]["ok"], (key, r[key])


def test_write_outside_work_dir(report):
    _need(report, "landlock_fs")
    r = _attack(report, "escape_write")["result"]
    assert r["inside"]["ok"]
    for how in ("absolute", "dotdot", "symlink"):
        assert not r[how]["ok"], (how, r[how])
    assert not report["_target_exists"]


def test_tcp_and_udp_to_localhost(report):
    if not (report["layers"]["seccomp"][0] or report["layers"]["landlock_net"][0]
            or report["layers"]["netns"][0]):
        pytest.skip("neither seccomp, Landlock TCP rules nor a network namespace is available")
    r = _attack(report, "network")["result"]
    assert not r["tcp"]["ok"] and not r["udp"]["ok"]
    assert not report["_tcp_connected"] and not report["_udp_received"]


def _userns_available() -> None:
    if not os.path.exists("/proc/self/ns/user"):
        pytest.skip("the kernel has no user namespaces")
    try:
        with open("/proc/sys/user/max_user_namespaces") as fh:
            if int(fh.read()) == 0:
                pytest.skip("user namespaces are disabled (user.max_user_namespaces = 0)")
    except OSError:
        pass


def test_netns_is_active_inside_an_unprivileged_user_namespace(report):
    """Without CAP_SYS_ADMIN the zygote creates its network namespace inside a user namespace."""
    active, detail = report["layers"]["netns"]
    if not active and "user namespace" in detail:
        _userns_available()  # a kernel that refuses it is a reported gap, not a failure
    assert active, detail
    assert "unprivileged user namespace" in detail and f"uid {UID}" in detail
    assert report["doctor"]["netns"] == [active, detail]
    assert "netns" in report["required"]
    ins = report["inspect"]
    host_ns = ins["host"]["ns"]
    for name in ins.keys() - {"host"}:  # the zygote and both slots' standby children
        assert ins[name]["ns"]["net"] != host_ns["net"], name
        assert ins[name]["ns"]["user"] != host_ns["user"], name
        assert ins[name]["ns"]["net"] == ins["zygote"]["ns"]["net"], name  # one, created once by the zygote
    assert len(ins) == 4, sorted(ins)
    # each slot's standby is in a user namespace of the slot's own, inside the zygote's
    zygote_user = ins["zygote"]["ns"]["user"]
    assert host_ns["user_parent"] == "" and ins["zygote"]["ns"]["user_parent"] == host_ns["user"]
    for name in ("standby0", "standby1"):
        assert ins[name]["ns"]["user_parent"] == zygote_user, (name, ins[name]["ns"])
    assert ins["standby0"]["ns"]["user"] != ins["standby1"]["ns"]["user"]


def test_no_capabilities_in_the_user_namespace(report):
    """A new user namespace comes with a full capability set; the zygote drops all of it before forking."""
    _need(report, "netns")
    caps = _attack(report, "caps")["result"]  # what the plugin process itself holds (capget, PR_CAPBSET_READ)
    assert caps["CapEff"] == 0 and caps["CapPrm"] == 0, caps
    assert caps["CapInh"] == 0 and caps["CapBnd"] == 0, caps
    # Landlock hides /proc from the plugin; had it read its status, the sets would be empty there too
    st = caps["proc_status"]
    assert not st["ok"] or all(line.split()[1] == "0" * 16 for line in st["value"].splitlines()
                               if line.startswith(("CapEff", "CapPrm"))), st
    # the zygote and the standby children that run the next calls, read from the host's /proc
    for name, info in report["inspect"].items():
        if name != "host":
            assert all(v == 0 for v in info["caps"].values()), (name, info["caps"])


def test_user_namespace_alone_cuts_the_network_and_keeps_ids(report):
    """The helper without Landlock or seccomp: the empty network namespace alone stops TCP and UDP."""
    h = report["helper"]
    if "error" in h:
        _userns_available()
    assert "error" not in h, h
    assert all(v == 0 for k, v in h["caps"].items()), h["caps"]  # CapEff, CapPrm, CapInh, CapBnd, CapAmb
    assert set(h["caps"]) >= {"CapEff", "CapPrm", "CapBnd"}
    assert h["ids"] == [UID, UID, GID, GID] and h["file_uid"] == UID  # mapped 1:1: files keep their owner
    assert "unreachable" in h["tcp"].lower() and "unreachable" in h["udp"].lower(), h
    assert not report["_tcp_connected"] and not report["_udp_received"]


def test_kill_parent_and_host(report):
    _need(report, "landlock_scope")  # no dedicated uid here: Landlock's signal scope is the only layer
    r = _attack(report, "kill_parent")["result"]
    assert r["ppid"] == report["host"]["zygote_pid"]
    assert not r["kill_ppid"]["ok"] and not r["kill_host"]["ok"]
    assert report["control"]["zygote_alive_after_kill"]


def test_busy_loop_is_stopped_by_the_cpu_limit(report):
    r = _attack(report, "busy")
    assert r["error"] == "LimitExceeded" and r["limit"] == "cpu", r


def test_sleep_is_stopped_by_the_wall_limit(report):
    r = _attack(report, "sleep")
    assert r["error"] == "PluginTimeout" and r["limit"] == "wall_time", r


def test_memory_no_process_maps_is_bounded_by_file_size_times_open_files(report):
    """memfd pages escape RLIMIT_AS, and no cgroup counts them here: each file and their number are capped."""
    many = _attack(report, "memfd_fill:files")  # 3 MiB files: stopped by the 16 open files, ~40 MiB in all
    assert many.get("error") == "LimitExceeded" and many["limit"] == "open_files", many
    big = _attack(report, "memfd_fill:one_big")  # a 5 MiB file past file_size_mb = 4
    assert big.get("error") == "LimitExceeded" and big["limit"] == "file_size", big


def test_huge_allocation_fails(report):
    r = _attack(report, "huge_alloc")
    assert r["error"] == "LimitExceeded" and r["limit"] == "memory", r


def test_double_fork_daemon_and_leftover_children_do_not_survive(report):
    """Without a cgroup the zygote, as subreaper, kills every orphan it adopts (what the doctor claims)."""
    daemon = _attack(report, "daemon")["result"]["daemon"]
    assert report["control"]["daemon_gone"], daemon
    assert _attack(report, "fork_bomb")["result"] == 20  # 20 children left sleeping when the call returned
    assert report["control"]["strays"] == [], report["control"]["strays"]
    assert report["_left_over"] == []  # nothing of the unprivileged uid outlived the host


def test_fork_and_thread_bombs_are_capped_in_each_slots_user_namespace(report):
    """No cgroup and no dedicated uid, yet RLIMIT_NPROC bites: it counts per user namespace.

    Each slot has a user namespace of its own inside the zygote's, holding only that slot's
    call (and its next standby), so the cap (processes + 1 = 33) is the call's own and never
    counts the host's processes or another call's.
    """
    assert report["layers"]["netns"][0], "needs the zygote's own user namespace"
    assert "RLIMIT_NPROC 33 per call" in report["layers"]["rlimits"][1], report["layers"]["rlimits"]
    bomb = _attack(report, "fork_bomb_unbounded")
    assert bomb.get("error") == "LimitExceeded" and bomb["limit"] == "processes", bomb
    forked = int(re.search(r"forked (\d+)", bomb["stderr"]).group(1))
    # its own process is counted, and this slot's next standby if it was forked meanwhile
    assert 31 <= forked <= 32, forked
    threads = _attack(report, "thread_bomb")
    assert threads.get("error") == "LimitExceeded" and threads["limit"] == "processes", threads
    assert report["control"]["strays_after_bomb"] == [] and report["control"]["strays_after_thread_bomb"] == []
    assert _attack(report, "fork_after_bomb") == {"result": 24, "stdout": ""}  # the budget is back


def test_a_bomb_in_one_call_leaves_other_calls_their_budget(report):
    """While one call holds every process it may fork, a call in the other slot still forks 24."""
    assert report["control"]["bomb_held_saturated"], "the holding call never reached its cap"
    assert _attack(report, "fork_beside_held_bomb") == {"result": 24, "stdout": ""}
    assert 31 <= _attack(report, "bomb_held")["result"] <= 32
    assert report["control"]["strays_after_held_bomb"] == []


@pytest.mark.parametrize("name", ["zygote_killed_mid_call", "zygote_killed_mid_call_setsid"])
def test_zygote_killed_mid_call_takes_the_calls_processes_with_it(report, name):
    """No cgroup: when its zygote dies the host kills each call's process group, then every process
    left in the zygote's user namespace, which also reaches a child that left the group with setsid
    (else PID 1 adopts them and they run on)."""
    seen, ctl = report["attacks"][name], report["control"][name]
    assert len(ctl["victims"]) == 2, (ctl, seen)  # the call's process and the child it forked, both sleeping 60 s
    assert ctl["own_session"] is name.endswith("setsid"), ctl
    assert ctl["survivors"] == [], (ctl, seen)
    assert seen["error"] == "SandboxError", seen


def test_host_killed_mid_call_takes_its_zygote_and_the_calls_processes_with_it(report):
    """The zygote notices its host is gone and kills all of its user namespace, setsid children too."""
    ctl = report["control"]["host_killed_mid_call"]
    assert len(ctl["watched"]) == 2 and ctl["child_own_session"], ctl  # its zygote, its plugin's setsid child
    assert ctl["survivors"] == [], ctl


def test_work_dirs_are_a_capped_tmpfs_in_the_zygotes_mount_namespace(report):
    """No root, so no tmpfs mount for the host; its zygote mounts one over the base dir in its own namespace."""
    _need(report, "workdir_quota")
    assert "zygote's own mount namespace" in report["layers"]["workdir_quota"][1]
    full = _attack(report, "many_files")
    assert full["error"] == "LimitExceeded" and full["limit"] == "file_size" and "work dir full" in full["message"], full
    # in the host's own view the slots' dirs are empty mount points: nothing reached its disk
    assert report["control"]["host_view_of_base"] == {"slot0": [], "slot1": []}
    assert _attack(report, "files_after_full")["result"] == 100


def test_a_work_dir_locked_by_its_plugin_is_still_removed_and_the_slot_reused(report):
    """chmod 000 on a work dir made the cleanup fail as the host's own uid, which retired the slot: two such calls
    took a two-slot host out of service."""
    for i in range(3):
        assert _attack(report, f"lock_work_dir_{i}") == {"result": "locked", "stdout": ""}
    assert _attack(report, "echo_after_locks")["result"]["params"] == {"action": "echo"}


def test_host_keeps_serving(report):
    after = report["attacks"]["echo_after"]
    assert "error" not in after, after
    assert after["result"]["params"] == {"action": "echo"} and after["stdout"] == "to stdout\n"

