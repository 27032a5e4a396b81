"""Hostile plugins through the real sandbox: each attack is contained and the host serves the next call.

Every test names the layer(s) that stop the attack and skips, with the
reason, where that layer is missing on the machine running the suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import threading
import time

import pytest

from karen_hooks import LimitExceeded, Limits, PluginError, PluginSettings, PluginTimeout, SandboxError
from karen_hooks.sandbox._layers import proc_stat

from .conftest import HOST_PID, alive, localhost_listeners, need, run, still_serves


def _limit(exc_info) -> str:
    assert isinstance(exc_info.value, LimitExceeded)
    assert exc_info.value.plugin == "hostile"
    return exc_info.value.limit


# -- memory ------------------------------------------------------------------


def test_huge_allocation(executor, layers):
    need(layers, "rlimits")
    t = time.monotonic()
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "huge_alloc", mb=4096)
    assert _limit(ei) == "memory"
    assert ei.value.setting == "memory_mb" and "raise plugins.hostile.limits.memory_mb" in str(ei.value)
    assert time.monotonic() - t < 5
    still_serves(executor)


def test_gradual_growth(executor, layers):
    need(layers, "cgroup_memory")
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "grow", limits=Limits(memory_mb=128, wall_seconds=20))
    assert _limit(ei) == "memory"
    still_serves(executor)


def test_memory_no_process_maps_is_counted(executor, layers):
    """memfd pages are in no address space (RLIMIT_AS misses them); the cgroup counts them."""
    need(layers, "cgroup_memory")
    with pytest.raises(LimitExceeded) as ei:  # 8 MiB files: each under file_size_mb, 60 of them under open_files
        run(executor, "memfd_fill", limits=Limits(memory_mb=128, wall_seconds=20), mb_each=8, stop_mb=480)
    assert _limit(ei) == "memory"
    still_serves(executor)


# -- time --------------------------------------------------------------------


def test_busy_loop_ignoring_sigxcpu(executor, layers):
    need(layers, "rlimits")
    t = time.monotonic()
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "busy", limits=Limits(cpu_seconds=1, wall_seconds=20))
    assert _limit(ei) == "cpu"
    assert time.monotonic() - t < 10  # killed at the hard limit, not the wall time
    still_serves(executor)


def test_sleep_hits_wall_time(executor):
    t = time.monotonic()
    with pytest.raises(PluginTimeout) as ei:
        run(executor, "sleep", limits=Limits(wall_seconds=0.5), seconds=60)
    assert ei.value.limit == "wall_time" and ei.value.plugin == "hostile"
    assert "raise plugins.hostile.limits.wall_seconds" in str(ei.value)
    assert time.monotonic() - t < 3
    still_serves(executor)


# -- processes ---------------------------------------------------------------


def test_fork_bomb_then_next_call_gets_full_budget(executor, layers):
    need(layers, "cgroup_pids")
    assert os.geteuid() == 0 or pytest.skip("the root case needs the host to run as root")
    lim = Limits(processes=16, wall_seconds=20)
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "fork_bomb", limits=lim)
    assert _limit(ei) == "processes"
    assert "forked" in ei.value.stderr
    # every bomb process is gone, so the next call can use its whole budget
    assert run(executor, "fork_n", limits=lim, n=12).result == 12
    still_serves(executor)


def test_thread_bomb_then_next_call_gets_full_budget(executor, layers):
    need(layers, "cgroup_pids")
    lim = Limits(processes=16, wall_seconds=20)
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "thread_bomb", limits=lim)
    assert _limit(ei) == "processes"
    assert run(executor, "fork_n", limits=lim, n=12).result == 12


def test_double_fork_daemon_does_not_survive_the_call(executor, layers):
    need(layers, "cgroup_pids")
    daemon = run(executor, "daemon").result["daemon"]
    deadline = time.monotonic() + 2
    while alive(daemon) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(daemon)


# -- files -------------------------------------------------------------------


def test_exhausting_file_handles(executor, layers):
    need(layers, "rlimits")
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "files")
    assert _limit(ei) == "open_files"
    still_serves(executor)


def test_large_file(executor, layers):
    need(layers, "rlimits")
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "big_file", limits=Limits(file_size_mb=4), mb=64)
    assert _limit(ei) == "file_size" and ei.value.setting == "file_size_mb"
    still_serves(executor)


def test_many_small_files_fill_only_the_work_dir(executor, layers):
    need(layers, "workdir_quota")
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "many_files", limits=Limits(work_dir_mb=4), n=100_000, size=8192)
    assert _limit(ei) == "file_size" and "work dir full" in str(ei.value)
    # the hint names the setting that raises the work dir's size, not one file's
    assert ei.value.setting == "work_dir_mb" and "plugins.hostile.limits.work_dir_mb" in str(ei.value)
    still_serves(executor)


# -- output and replies -----------------------------------------------------------------


def test_a_work_dir_nested_thousands_deep_is_removed_and_the_slot_reused():
    """shutil.rmtree ran out of stack on it: the slot was lost for good (background cleanup) or the call
    raised a bare RecursionError (a failed call), and close() left the slot's tmpfs mounted."""
    from karen_hooks.sandbox import SandboxExecutor

    with SandboxExecutor(slots=1) as ex:
        for _ in range(3):  # one slot: each call needs the previous one's cleanup to have freed it
            assert run(ex, "deep_dirs", depth=3000).result == {"depth": 3000}
        with pytest.raises(PluginTimeout):  # a failed call cleans up inline
            run(ex, "deep_dirs", depth=3000, sleep=30, limits=Limits(wall_seconds=1))
        still_serves(ex)
        base = ex._base
    assert not os.path.exists(base)


def test_a_call_cannot_write_into_another_slots_work_dir_even_if_invited(layers):
    """Slots were kept apart by file permissions alone: Landlock let every call write anywhere in the base dir."""
    need(layers, "landlock_fs")
    need(layers, "workdir_quota")
    import glob
    import stat

    from karen_hooks.sandbox import SandboxExecutor

    with SandboxExecutor(slots=2) as ex:
        door = threading.Thread(target=run, args=(ex, "open_door"), kwargs={"sleep": 3})
        door.start()
        found, deadline = "", time.monotonic() + 5
        while not found and time.monotonic() < deadline:
            for d in glob.glob(os.path.join(ex._base, "slot*", "c*")):
                with contextlib.suppress(OSError):
                    if stat.S_IMODE(os.stat(d).st_mode) == 0o777:
                        found = d
            time.sleep(0.02)
        assert found, "the first call never opened its work dir"
        assert run(ex, "walk_in", dir=found).result == "Permission denied"
        door.join(10)
        assert not os.path.exists(os.path.join(found, "from_another_slot"))


def test_gigabyte_to_stdout_costs_the_host_only_the_cap(executor):
    t = time.monotonic()
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "stdout_flood", limits=Limits(stdout_bytes=1 << 20), mb=1024)
    assert _limit(ei) == "stdout"
    assert time.monotonic() - t < 5
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "stderr_flood", limits=Limits(stderr_bytes=1 << 16), mb=1024)
    assert _limit(ei) == "stderr"
    assert len(ei.value.stderr) <= 1 << 16
    still_serves(executor)


def test_oversized_reply(executor):
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "big_reply", limits=Limits(reply_bytes=1 << 20), mb=8)
    assert _limit(ei) == "reply_size"
    with pytest.raises(LimitExceeded) as ei:
        run(executor, "forge_oversized_header")
    assert _limit(ei) == "reply_size"
    still_serves(executor)


def test_malformed_and_forged_replies(executor):
    with pytest.raises(SandboxError) as ei:
        run(executor, "forge_reply")
    assert "malformed" in str(ei.value) and not isinstance(ei.value, LimitExceeded)
    with pytest.raises(SandboxError) as ei:
        run(executor, "forge_deep")
    assert "nests too deeply" in str(ei.value)
    with pytest.raises(SandboxError) as ei:
        run(executor, "forge_limit")
    assert "unknown limit" in str(ei.value)
    still_serves(executor)


# -- descriptors -------------------------------------------------------------


def test_no_inherited_descriptors_but_the_channel(executor):
    fds = {int(k): v for k, v in run(executor, "fds").result.items()}
    assert fds.pop(0)["kind"] == "chr"  # /dev/null
    assert fds.pop(1)["kind"] == "fifo" and fds.pop(2)["kind"] == "fifo"  # this call's stdout/stderr pipes
    assert fds.pop(3)["kind"] == "sock"  # the protocol channel
    # anything else may only be an O_PATH directory alias (Python under a private home, see docs/security.md)
    assert all(v["kind"] == "dir" and v["o_path"] for v in fds.values()), fds


# -- secrets -----------------------------------------------------------------


def test_host_environment_and_proc_secrets(executor, layers):
    os.environ["KAREN_TEST_SECRET"] = "s3cr3t-value"
    try:
        r = run(executor, "secrets", host_pid=HOST_PID).result
    finally:
        del os.environ["KAREN_TEST_SECRET"]
    assert r["env"] == {}  # exec'd with an empty environment
    need(layers, "landlock_fs")
    for key in ("proc_environ", "proc_mem", "proc_cmdline"):
        assert not r[key]["ok"], (key, r[key])
        assert "s3cr3t" not in str(r[key])


def test_etc_shadow_unreadable(executor, layers):
    need(layers, "landlock_fs")
    r = run(executor, "secrets", host_pid=HOST_PID).result
    assert not r["shadow"]["ok"] and "Permission" in r["shadow"]["error"]
    assert not r["passwd"]["ok"]  # nothing outside the allow-list, not even world-readable files


def test_writes_outside_work_dir(executor, layers):
    need(layers, "landlock_fs")
    outside = tempfile.mkdtemp(prefix="karen-outside-")
    os.chmod(outside, 0o777)  # only the sandbox layers stand in the way
    target = os.path.join(outside, "pwned.txt")
    try:
        r = run(executor, "escape_write", target=target).result
        assert r["inside"]["ok"]
        for how in ("absolute", "dotdot", "symlink"):
            assert not r[how]["ok"], (how, r[how])
        assert not os.path.exists(target)
    finally:
        import shutil

        shutil.rmtree(outside)


# -- network -----------------------------------------------------------------


def test_tcp_udp_and_unix_sockets_fail(executor, layers):
    need(layers, "seccomp")
    tcp, udp = localhost_listeners(udp_timeout=0.2)
    d = tempfile.mkdtemp(prefix="karen-unix-")
    os.chmod(d, 0o777)
    path = os.path.join(d, "sock")
    uds = socket.socket(socket.AF_UNIX)
    uds.bind(path)
    os.chmod(path, 0o777)
    uds.listen(5)
    uds.settimeout(0.2)
    try:
        r = run(executor, "network", tcp_port=tcp.getsockname()[1], udp_port=udp.getsockname()[1],
                unix_path=path).result
        for kind in ("tcp", "udp", "unix"):
            assert not r[kind]["ok"], (kind, r[kind])
        for srv in (tcp, uds):
            with pytest.raises(socket.timeout):
                srv.accept()
        with pytest.raises(socket.timeout):
            udp.recv(100)
    finally:
        for s in (tcp, udp, uds):
            s.close()
        import shutil

        shutil.rmtree(d)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the attack calls clone() by its x86-64 syscall number")
def test_no_new_namespaces_through_clone_or_clone3(executor, layers):
    """unshare() and setns() are denied by name; clone() and clone3() take namespace flags too.

    A user namespace gives its creator every capability inside it, and with them far more
    of the kernel to attack; on a host that is not root it would also hide a process from
    the sweep of the zygote's user namespace.
    """
    need(layers, "seccomp")
    r = run(executor, "new_namespaces").result
    for kind in ("user", "net", "mount", "pid"):
        assert r["clone " + kind] == "Operation not permitted", r
        assert r["clone3 " + kind] == "Function not implemented", r  # flags in memory: clone3 is refused whole
    assert r["fork"] == 7 and r["thread"] == "ran", r
    still_serves(executor)


def test_no_system_v_ipc_or_posix_message_queues(executor, layers):
    """A SysV segment outlives its call, its cgroup and the host, and any later call of any tenant can attach it."""
    need(layers, "seccomp")
    r = run(executor, "sysv_ipc").result
    assert r == {"shmget": "Operation not permitted", "msgget": "Operation not permitted",
                 "semget": "Operation not permitted", "mq_open": "Operation not permitted"}, r
    still_serves(executor)


def test_unix_datagrams_cannot_be_addressed_to_a_path(executor, layers):
    """A datagram socket from socketpair() could still sendto() any socket path (syslog, journald, sd_notify)."""
    need(layers, "seccomp")
    d = tempfile.mkdtemp(prefix="karen-dgram-")  # reachable by the sandbox uid: only seccomp stands in the way
    os.chmod(d, 0o777)
    path = os.path.join(d, "dg.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    os.chmod(path, 0o666)
    listener.settimeout(0.2)
    try:
        r = run(executor, "unix_dgram", path=path).result
        assert r == {"sendto": "Operation not permitted", "connect": "Operation not permitted",
                     "sendmsg": "Operation not permitted", "pair": "ping"}, r
        with pytest.raises(socket.timeout):
            listener.recv(100)
    finally:
        listener.close()
        import shutil

        shutil.rmtree(d)
    still_serves(executor)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the attack uses x86-64 syscall numbers")
def test_no_pidfds_mount_table_or_file_watches(executor, layers):
    """Landlock hides /proc, but pidfd_open, listmount/statmount and inotify/fanotify showed the host anyway."""
    need(layers, "seccomp")
    r = run(executor, "host_views").result
    assert set(r.values()) == {"Operation not permitted"}, r
    still_serves(executor)


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)


def test_seccomp_is_loaded_once_in_the_zygote_and_inherited(executor, layers):
    """The zygote loads the filter once; every child inherits it and adds only its own small one."""
    need(layers, "seccomp")
    z = executor._zygote()
    st = _proc_status(z.pid)
    assert st["Seccomp"] == "2" and st["Seccomp_filters"] == "1" and st["NoNewPrivs"] == "1"
    run(executor, "echo")  # a slot's standby child is re-forked after a call
    deadline = time.monotonic() + 3
    while not z.standby and time.monotonic() < deadline:
        time.sleep(0.01)
    standby = [pid for pid, _sock in list(z.standby.values())]
    assert standby
    for pid in standby:
        with contextlib.suppress(FileNotFoundError):  # taken by a concurrent call meanwhile
            # the zygote's filter, inherited, and the children's own small one (sendmsg), which a
            # standby loads right after it is forked: wait for it, then never the big one twice
            deadline = time.monotonic() + 3
            while (st := _proc_status(pid))["Seccomp_filters"] == "1" and time.monotonic() < deadline:
                time.sleep(0.005)
            assert st["Seccomp"] == "2" and st["Seccomp_filters"] == "2"


def test_network_namespace_has_no_route(executor, layers):
    need(layers, "netns")
    # seccomp already denies socket(); the netns is proven by the zygote itself
    with open(f"/proc/{executor._zygote().pid}/ns/net") as _:
        pass
    assert os.readlink(f"/proc/{executor._zygote().pid}/ns/net") != os.readlink("/proc/self/ns/net")


# -- signals -----------------------------------------------------------------


def test_kill_parent_and_host(executor, layers):
    if not (layers["uid"].active or layers["landlock_scope"].active):
        pytest.skip("neither a dedicated uid nor Landlock signal scoping is available here")
    zpid = executor._zygote().pid
    r = run(executor, "kill_parent", host_pid=HOST_PID).result
    assert r["ppid"] == zpid
    assert not r["kill_ppid"]["ok"] and not r["kill_host"]["ok"]
    assert alive(zpid)
    still_serves(executor)


# -- state -------------------------------------------------------------------


def test_monkeypatching_builtins_does_not_leak_to_next_call(executor):
    assert run(executor, "monkeypatch").result == "patched"
    r = run(executor, "echo").result
    assert r["json_dumps_ok"] and r["calls"] == 1
    still_serves(executor)


def test_ctypes_segfault(executor):
    with pytest.raises(SandboxError) as ei:
        run(executor, "segfault")
    assert "SIGSEGV" in str(ei.value) and ei.value.plugin == "hostile"
    still_serves(executor)


def test_zygote_killed_ten_times_in_a_row(executor):
    for _ in range(10):
        z = executor._zygote()
        os.kill(z.pid, signal.SIGKILL)
        z.proc.wait(5)
        still_serves(executor)
    assert executor._zygote().pid != z.pid


def test_zygote_killed_during_a_call_is_a_typed_error(executor):
    z = executor._zygote()
    threading.Timer(0.3, lambda: os.kill(z.pid, signal.SIGKILL)).start()
    with pytest.raises(PluginTimeout):
        run(executor, "sleep", limits=Limits(wall_seconds=1), seconds=30)
    still_serves(executor)


def test_warm_worker_wedged_is_replaced(executor):
    st = PluginSettings(mode="warm", warm_max_calls=47)  # (a worker of its own: the executor is shared)
    with pytest.raises(PluginTimeout):
        run(executor, "sleep", settings=st, limits=Limits(wall_seconds=0.3), seconds=30)
    assert run(executor, "counter", settings=st).result == 1


def test_no_stray_processes_after_hostile_calls(executor, layers):
    need(layers, "cgroup_pids")
    executor.drop_warm()  # warm workers are meant to stay; everything else must be gone
    for action in ("daemon", "fork_n"):
        run(executor, action, n=3)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        free = list(executor._slots.queue)  # a slot is back only once its cgroup is empty
        z = executor._zygote()
        standby = {pid for pid, _sock in z.standby.values()}  # pre-forked children waiting for a call
        busy = [_readable(s.cg.pids()) - standby for s in free if s.cg is not None]
        children = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == z.pid and int(p) not in standby]
        if len(free) == executor._nslots and not any(busy) and not children:
            break
        time.sleep(0.02)
    assert len(free) == executor._nslots
    assert not any(busy)
    assert children == []


def _readable(pids: set[int] | None) -> set[int]:
    assert pids is not None, "a slot's process list could not be read"
    return pids


def _ppid(pid: int) -> int:
    st = proc_stat(pid)
    return int(st[1]) if st is not None else -1


def test_plugin_error_is_not_a_limit(executor):
    with pytest.raises(PluginError) as ei:
        run(executor, "fail")
    assert not isinstance(ei.value, SandboxError)


def test_wedged_zygote_is_replaced(executor):
    z = executor._zygote()
    os.kill(z.pid, signal.SIGSTOP)
    try:
        timeouts = 0
        for _ in range(executor._nslots + 3):  # standbys serve first; then the wedge shows
            try:
                run(executor, "echo", limits=Limits(wall_seconds=1))
            except PluginTimeout:
                timeouts += 1
            if executor._zyg is not z:
                break
        assert timeouts <= 1
    finally:
        with contextlib.suppress(ProcessLookupError):  # normally it was killed and replaced
            os.kill(z.pid, signal.SIGCONT)
    still_serves(executor)
    assert executor._zygote() is not z


def test_memory_call_flood_is_capped(executor):
    class Bridge:
        calls = 0

        def read(self, query, limit=5):
            Bridge.calls += 1
            return []

    assert run(executor, "memory_flood", memory=Bridge()).result == 500
    assert Bridge.calls == 1000


def test_memory_writes_are_capped_per_call(executor):
    """ctx.memory writes land in the host's database: 1,000 calls of 4 MiB each would be 4 GB per call."""

    class Bridge:
        written = 0

        def write(self, query, payload, ttl_seconds=None):
            Bridge.written += len(payload)
            return {"id": "r"}

    r = run(executor, "memory_fill", memory=Bridge(), n=40, kb=100).result  # 4 MB asked for
    assert Bridge.written <= Limits().memory_write_bytes
    assert r["stored"] == Bridge.written // (100 << 10) and r["stored"] >= 9, r
    assert "memory_write_bytes" in r["refused"] and "raise plugins" in r["refused"], r
    Bridge.written = 0
    r = run(executor, "memory_fill", memory=Bridge(), limits=Limits(memory_write_bytes=8 << 20), n=40, kb=100).result
    assert r == {"stored": 40, "refused": ""}, r  # the operator can allow more
    still_serves(executor)


def test_memory_calls_cannot_outrun_the_wall_time(executor):
    """A thousand memory calls in one write, each slow to serve: the deadline is checked between them."""

    class Slow:
        def read(self, query, limit=5):
            time.sleep(0.02)
            return []

    t = time.monotonic()
    with pytest.raises(PluginTimeout):
        run(executor, "memory_burst", memory=Slow(), limits=Limits(wall_seconds=1), n=1000, sleep=30)
    assert time.monotonic() - t < 4  # served one by one, they would take 20 s
    still_serves(executor)


def test_unread_memory_answers_cannot_fill_the_host(executor):
    """Memory calls whose answers the plugin never reads are refused once a reply's worth is waiting."""

    class Big:
        def read(self, query, limit=5):
            return ["x" * 10_000]

    t = time.monotonic()
    with pytest.raises(SandboxError, match="without reading"):  # 100,000 answers would be 1 GB in the host
        run(executor, "memory_burst", memory=Big(), limits=Limits(reply_bytes=1 << 20), n=100_000, sleep=30)
    assert time.monotonic() - t < 10
    still_serves(executor)


def test_a_memory_answer_larger_than_a_reply_is_an_error_to_the_plugin(executor):
    class Huge:
        def read(self, query, limit=5):
            return ["x" * (2 << 20)]

    r = run(executor, "memory_big_read", memory=Huge(), limits=Limits(reply_bytes=1 << 20)).result
    assert "reply_bytes" in r["error"] and "fewer" in r["error"], r
    still_serves(executor)


def _memory_contains(pid: int, needle: bytes) -> bool:
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if not perms.startswith("rw"):
                continue
            lo, hi = (int(x, 16) for x in addr.split("-"))
            try:
                mem.seek(lo)
                if needle in mem.read(hi - lo):
                    return True
            except (OSError, OverflowError, ValueError):
                continue
    return False


def test_zygote_never_holds_a_plugins_env_or_params(executor, monkeypatch):
    """Every child is forked from the zygote, so a secret in its memory would reach every plugin."""
    if os.geteuid() != 0:
        pytest.skip("reading the zygote's memory needs root")
    z = executor._zygote()
    monkeypatch.setattr(z, "take_standby", lambda slot: None)  # force the path through the zygote
    r = run(executor, "echo", settings=PluginSettings(env={"API_KEY": "zyg0te-s3cret-value"}),
            note="par4ms-s3cret").result
    assert r["env"] == {"API_KEY": "zyg0te-s3cret-value"} and r["params"]["note"] == "par4ms-s3cret"
    assert not _memory_contains(z.pid, b"zyg0te-s3cret-value")
    assert not _memory_contains(z.pid, b"par4ms-s3cret")
