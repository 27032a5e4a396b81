"""Driver for ``test_nonroot_host.py``: runs as an unprivileged uid, prints one line of JSON.

Not a test module: the root test process starts it as ``python nonroot_driver.py CONFIG_JSON``
after dropping to an unused uid/gid. It builds the real executor and plugin manager and
runs the hostile plugin's attacks; the tests assert on what it prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

cfg = json.loads(sys.argv[1])
records: list[list[str]] = []


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        records.append([record.levelname, record.getMessage()])


logging.getLogger("karen_hooks").addHandler(_Keep())
logging.getLogger("karen_hooks").setLevel(logging.DEBUG)

from karen_hooks import Limits, PluginManager, PluginRouter, PluginSettings, PluginSpec, load_settings  # noqa: E402
from karen_hooks.sandbox import SandboxExecutor, doctor, format_doctor  # noqa: E402
from karen_hooks.sandbox._layers import proc_stat, read_to_eof  # noqa: E402


def _alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def _mine() -> set[int]:
    uid = os.getuid()
    out = set()
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if os.stat(f"/proc/{e}").st_uid == uid and _alive(int(e)):
                    out.add(int(e))
            except OSError:
                pass
    return out


with open("/proc/self/status") as fh:
    cap_eff = int(next(line for line in fh if line.startswith("CapEff:")).split()[1], 16)
host = {"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(), "cap_eff": cap_eff, "pid": os.getpid()}

def _status_caps(pid: int | str) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as fh:
        return {k: int(v, 16) for k, _, v in (line.partition(":") for line in fh) if k.startswith("Cap")}


def _ns(pid: int | str) -> dict[str, str]:
    out = {n: os.readlink(f"/proc/{pid}/ns/{n}") for n in ("net", "user")}
    import fcntl

    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
    try:
        parent = fcntl.ioctl(fd, 0xB702)  # NS_GET_PARENT: a descriptor of the namespace's parent
        out["user_parent"] = os.readlink(f"/proc/self/fd/{parent}")
        os.close(parent)
    except PermissionError:  # the initial namespace has none
        out["user_parent"] = ""
    finally:
        os.close(fd)
    return out


def _helper_alone() -> dict:
    """unshare_user_net in a forked child, without Landlock or seccomp: the namespace alone must cut the network."""
    import socket

    from karen_hooks.sandbox._userns import unshare_user_net

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out: dict = {}
        try:
            out["detail"] = unshare_user_net()[0]
            out["caps"] = _status_caps("self")
            out["ids"] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid()]
            for kind, port in (("tcp", cfg["tcp_port"]), ("udp", cfg["udp_port"])):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
                try:
                    if kind == "tcp":
                        s.settimeout(1)
                        s.connect(("127.0.0.1", port))
                    else:
                        s.sendto(b"pwned", ("127.0.0.1", port))
                    out[kind] = "sent"
                except OSError as exc:
                    out[kind] = f"{type(exc).__name__}: {exc}"
                finally:
                    s.close()
            with open(os.path.join(cfg["helper_dir"], "owned"), "w"):
                pass
        except BaseException as exc:  # noqa: BLE001
            out["error"] = repr(exc)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = read_to_eof(r)
    os.waitpid(pid, 0)
    res = json.loads(data.decode())
    res["file_uid"] = os.stat(os.path.join(cfg["helper_dir"], "owned")).st_uid
    return res


helper = _helper_alone()  # before any thread exists: unshare(CLONE_NEWUSER) needs a single-threaded process

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ex = SandboxExecutor(slots=2)
    statuses = ex.layers()
layers = {s.name: [s.active, s.detail] for s in statuses}
host["zygote_pid"] = ex._zygote().pid
doc = doctor()
deadline = time.monotonic() + 5
while len(ex._zygote().standby) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
# the processes that will run plugin code (standby children) and the zygote, seen from the host
procs = {"host": os.getpid(), "zygote": host["zygote_pid"],
         **{f"standby{slot}": pid for slot, (pid, _sock) in ex._zygote().standby.items()}}
inspect = {name: {"caps": _status_caps(pid), "ns": _ns(pid)} for name, pid in procs.items()}

settings = load_settings(environ={"KARI_PLUGIN_DIR": cfg["plugins"], "KARI_CPU_LIMIT": "1"},
                         load_plugins=["hostile"], plugins={"hostile": {"limits": {"wall_seconds": 10}}},
                         remember_runs=False)
manager = PluginManager(router=PluginRouter(settings, executor=ex), memory=False)
USER = {"user_id": "u1", "roles": ["user"], "tenant_id": "acme"}
attacks: dict[str, dict] = {}


def attack(name: str, action: str | None = None, **params) -> dict:
    try:
        result, out, _err = asyncio.run(manager.run_plugin("hostile", {"action": action or name, **params}, USER))
        attacks[name] = {"result": result, "stdout": out}
    except Exception as exc:  # noqa: BLE001 - reported to the test
        attacks[name] = {"error": type(exc).__name__, "limit": getattr(exc, "limit", None), "message": str(exc)[:500],
                         "stderr": str(getattr(exc, "stderr", "") or "")[-500:]}
    return attacks[name]


control: dict = {}
attack("echo")
attack("secrets", host_pid=os.getpid())
peek = subprocess.run([sys.executable, "-I", "-S", "-c", f"print(open('/proc/{os.getpid()}/environ', 'rb').read())"],
                      capture_output=True, text=True, env={})
control["environ_readable_by_same_uid"] = "KAREN_TEST_SECRET" in peek.stdout
attack("escape_write", target=cfg["target"])
attack("network", tcp_port=cfg["tcp_port"], udp_port=cfg["udp_port"], unix_path="/nonexistent")
attack("caps")
attack("kill_parent", host_pid=os.getpid())
time.sleep(0.1)  # a SIGKILL is delivered before kill() returns; this only lets a dead zygote be noticed
control["zygote_alive_after_kill"] = _alive(host["zygote_pid"]) and ex._zygote().pid == host["zygote_pid"]
attack("busy")
attack("huge_alloc", mb=4096)
spec = PluginSpec(name="hostile", kind="directory", target="handler.py", path=os.path.join(cfg["plugins"], "hostile"),
                  code_paths=(os.path.join(cfg["plugins"], "hostile"),))
try:
    asyncio.run(ex.call(spec, "karen_run", {"intent": "x", "params": {"action": "sleep", "seconds": 60},
                                            "ctx": {**USER, "intent": "x", "plugin": "hostile"}},
                        PluginSettings(), Limits(wall_seconds=0.5)))
    attacks["sleep"] = {"result": "returned"}
except Exception as exc:  # noqa: BLE001
    attacks["sleep"] = {"error": type(exc).__name__, "limit": getattr(exc, "limit", None), "expected_error": True}
for name in ("busy", "huge_alloc"):
    attacks[name]["expected_error"] = True


def limited_attack(name: str, limits: Limits, **params) -> None:
    """An attack under limits of its own (the plugin's settings keep the defaults)."""
    try:
        asyncio.run(ex.call(spec, "karen_run", {"intent": "x", "params": {**params, "action": name.split(":")[0]},
                                                "ctx": {**USER, "intent": "x", "plugin": "hostile"}},
                            PluginSettings(), limits))
        attacks[name] = {"result": "returned"}
    except Exception as exc:  # noqa: BLE001
        attacks[name] = {"error": type(exc).__name__, "limit": getattr(exc, "limit", None), "expected_error": True}


# Memory no process maps (memfd): no cgroup counts it here. Each file stops at file_size_mb,
# and the number of files at open_files: that product is the bound.
limited_attack("memfd_fill:files", Limits(open_files=16, file_size_mb=4), mb_each=3, stop_mb=1 << 20)
limited_attack("memfd_fill:one_big", Limits(open_files=16, file_size_mb=4), mb_each=5, stop_mb=1 << 20)



def settle(daemon: int = 0) -> tuple[bool, list[int]]:
    """Wait (up to 5 s) until only this host, its zygote and the slots' standby children are left."""
    deadline = time.monotonic() + 5
    while True:
        z = ex._zygote()
        strays = _mine() - {os.getpid(), z.pid} - {pid for pid, _sock in list(z.standby.values())}
        gone = not daemon or not _alive(daemon)
        if (gone and not strays) or time.monotonic() > deadline:
            return gone, sorted(strays)
        time.sleep(0.02)


daemon = attack("daemon").get("result", {}).get("daemon", 0)
attack("fork_bomb", n=20)  # children sleep 60 s; the call returns as soon as they are forked
control["daemon_gone"], control["strays"] = settle(daemon)
# Unbounded: RLIMIT_NPROC in the zygote's user namespace stops them (32 + 2 x 2 slots + 1 in all).
attack("fork_bomb_unbounded", "fork_bomb")
control["strays_after_bomb"] = settle()[1]
attack("thread_bomb")
control["strays_after_thread_bomb"] = settle()[1]
for name in ("fork_bomb_unbounded", "thread_bomb"):
    attacks[name]["expected_error"] = True
attack("fork_after_bomb", "fork_n", n=24)  # the next call gets its budget back
# Work dirs with every permission taken away: a failed cleanup used to retire the slot for good
for i in range(3):  # more than the 2 slots
    attack(f"lock_work_dir_{i}", "lock_work_dir")
attack("echo_after_locks", "echo")
# Per call, not shared: while one call holds every process it could fork, another call forks too.
z = ex._zygote()
holder = threading.Thread(target=attack, args=("bomb_held", "fork_bomb_hold"), kwargs={"hold": 3})
holder.start()
deadline = time.monotonic() + 5
while not glob.glob(z.host_path(os.path.join(ex._base, "slot*", "*", "bomb.done"))) and time.monotonic() < deadline:
    time.sleep(0.02)
control["bomb_held_saturated"] = bool(glob.glob(z.host_path(os.path.join(ex._base, "slot*", "*", "bomb.done"))))
attack("fork_beside_held_bomb", "fork_n", n=24)
holder.join(30)
control["strays_after_held_bomb"] = settle()[1]
# Many small files: the zygote's tmpfs over the work dirs (2 slots x 4096 inodes, 2 x 64 MiB) fills,
# not the host's disk; in the host's own view the sandbox base dir stays empty.
attack("many_files", n=100_000, size=8192)
attacks["many_files"]["expected_error"] = True
control["host_view_of_base"] = {d: os.listdir(os.path.join(ex._base, d)) for d in sorted(os.listdir(ex._base))}
attack("files_after_full", "many_files", n=100, size=8192)  # the work dir was removed: room again

# The zygote killed in the middle of a call (a crash; or close() during a call): with no cgroup, the
# host kills each call's process group, and sweeps the zygote's user namespace for what left it.
def _session(pid: int) -> int:
    st = proc_stat(pid)
    return int(st[3]) if st is not None else -1


def zygote_killed_mid_call(name: str, **params) -> None:
    z = ex._zygote()
    mid = threading.Thread(target=attack, args=(name, "fork_and_sleep"), kwargs=params)
    mid.start()
    child, deadline = 0, time.monotonic() + 5
    while not child and time.monotonic() < deadline:  # the plugin writes its child's pid in its work dir
        for path in glob.glob(z.host_path(os.path.join(ex._base, "slot*", "*", "child.pid"))):
            with contextlib.suppress(OSError, ValueError):
                child = int(open(path).read())
        time.sleep(0.02)
    calls = set(z._by_pid) | {rec["started"].get("pid") for rec in list(z._pending.values()) if "started" in rec}
    victims = sorted({pid for pid in calls if isinstance(pid, int) and _alive(pid)} | ({child} if child else set()))
    escaped = bool(child) and _session(child) == child
    os.kill(z.pid, signal.SIGKILL)
    mid.join(30)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in victims) and time.monotonic() < deadline:
        time.sleep(0.02)
    control[name] = {"victims": victims, "survivors": [p for p in victims if _alive(p)], "own_session": escaped}
    attacks[name]["expected_error"] = True


zygote_killed_mid_call("zygote_killed_mid_call")
zygote_killed_mid_call("zygote_killed_mid_call_setsid", setsid=True)

# A host SIGKILLed mid-call: its zygote sees the control socket close and kills every process
# in its user namespace, the setsid child included, before it exits.
_SUB_HOST = r"""
import glob, os, sys, threading, time
from karen_hooks import Limits, PluginSettings, PluginSpec
from karen_hooks.sandbox import SandboxExecutor
ex = SandboxExecutor(slots=1)
spec = PluginSpec(name="hostile", kind="directory", target="handler.py", path=sys.argv[1], code_paths=(sys.argv[1],))
kw = {"intent": "x", "params": {"action": "fork_and_sleep", "setsid": True}, "ctx": {"user_id": "u", "intent": "x", "plugin": "hostile"}}
threading.Thread(target=lambda: ex.call_sync(spec, "karen_run", kw, PluginSettings(), Limits()), daemon=True).start()
deadline = time.monotonic() + 10
while not (found := glob.glob(ex._zygote().host_path(os.path.join(ex._base, "slot*", "*", "child.pid")))) or not open(found[0]).read():
    if time.monotonic() > deadline:
        sys.exit("the call never wrote child.pid")
    time.sleep(0.02)
print(ex._zygote().pid, open(found[0]).read(), flush=True)
time.sleep(60)
"""
sub = subprocess.Popen([sys.executable, "-c", _SUB_HOST, os.path.join(cfg["plugins"], "hostile")],
                       stdout=subprocess.PIPE, text=True, env=os.environ.copy())
try:
    left = [int(x) for x in sub.stdout.readline().split()]  # its zygote and the plugin's setsid child
    escaped = len(left) == 2 and _session(left[1]) == left[1]
finally:
    sub.kill()
    sub.wait()
    sub.stdout.close()
deadline = time.monotonic() + 5
while any(_alive(p) for p in left) and time.monotonic() < deadline:
    time.sleep(0.02)
control["host_killed_mid_call"] = {"watched": left, "survivors": [p for p in left if _alive(p)],
                                   "child_own_session": escaped}
attack("echo_after", "echo")  # served by a new zygote
ex.close()

print(json.dumps({
    "host": host, "helper": helper, "inspect": inspect, "layers": layers, "required": sorted(ex._required), "control": control, "attacks": attacks,
    "doctor": {s.name: [s.active, s.detail] for s in doc}, "doctor_table": format_doctor(doc),
    "log": records, "warnings": [[w.category.__name__, str(w.message)] for w in caught],
}))
