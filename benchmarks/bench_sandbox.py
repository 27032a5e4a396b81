"""Sandbox cost, side by side in one run: ``python benchmarks/bench_sandbox.py [--n 200]``.

Measures medians of: a trusted in-process pluggy call, a sandboxed
fork-per-call (all layers available here), a warm-mode sandboxed call,
``subprocess.run([python, "-I", "-S", "-c", "pass"])`` and a
``multiprocessing`` Pipe round trip; then the throughput of two concurrent
callers against one, and of one caller confined to one CPU against two
callers on two (whether anything serialises callers, which the plain ratio
cannot show when one caller already keeps every CPU busy). Prints a table and
checks the issue's targets:

- fork-per-call median <= 1/2 of the bare ``python -I -S`` spawn
- warm-mode median < 0.5 ms
- two concurrent callers >= 1.7x one caller's throughput
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pluggy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from karen_hooks import Limits, PluginSettings, PluginSpec, hookimpl, hookspecs  # noqa: E402
from karen_hooks.sandbox import SandboxExecutor, format_doctor  # noqa: E402
from karen_hooks.sandbox._layers import proc_stat  # noqa: E402

HANDLER = '''
def run(params, ctx=None):
    return {"echo": params}
'''
CTX = {"user_id": "u", "tenant_id": "t", "roles": [], "intent": "bench.echo", "plugin": "bench"}


def median_ms(fn: Callable[[], object], n: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        vals = [int(x) for x in fh.readline().split()[1:]]
    return sum(vals) - vals[3] - vals[4], sum(vals)


class Run:
    """One throughput run: calls per second, and how many CPUs were busy meanwhile.

    ``own_cpus`` is what the sandbox (host, zygote and its children) used,
    ``machine_cpus`` what the whole machine used: when that is close to the
    CPU count, the run was CPU-bound rather than serialised somewhere.
    """

    def __init__(self, rate: float, own_cpus: float, machine_cpus: float) -> None:
        self.rate = rate
        self.own_cpus = own_cpus
        self.machine_cpus = machine_cpus

    def __str__(self) -> str:
        return f"{self.rate:.1f}/s (sandbox used {self.own_cpus:.2f} CPUs, machine {self.machine_cpus:.2f})"


def throughput(fn: Callable[[], object], callers: int, seconds: float, zygote_pid: int) -> Run:
    stop = time.perf_counter() + seconds
    counts = [0] * callers

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            fn()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    c0, (b0, t0), w0 = _cpu_seconds(zygote_pid), _machine_jiffies(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c1, (b1, t1), w1 = _cpu_seconds(zygote_pid), _machine_jiffies(), time.perf_counter()
    ncpu = os.cpu_count() or 1
    return Run(sum(counts) / seconds, (c1 - c0) / (w1 - w0), ncpu * (b1 - b0) / max(1, t1 - t0))


def _sandbox_tree(zygote_pid: int) -> list[int]:
    """The zygote and every process under it (its standbys, calls and anything they forked)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := proc_stat(int(entry))) is not None:
            children.setdefault(int(st[1]), []).append(int(entry))
    tree, todo = [], [zygote_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def pin(cpus: set[int], zygote_pid: int) -> None:
    """Confine this process's threads, the zygote and its processes to ``cpus``.

    Threads and processes started later inherit the mask: caller threads from
    the main thread, call children from the zygote.
    """
    for pid in [int(t) for t in os.listdir("/proc/self/task")] + _sandbox_tree(zygote_pid):
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:  # exited meanwhile
            pass


def _cpu_parts(zygote_pid: int) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds used so far by this process (all threads), the zygote, and its reaped children."""
    ru = os.times()
    parts = {"host": (ru.user, ru.system), "zygote": (0.0, 0.0), "children": (0.0, 0.0)}
    st = proc_stat(zygote_pid)
    if st is not None:
        utime, stime, cutime, cstime = (int(x) / os.sysconf("SC_CLK_TCK") for x in st[11:15])
        parts["zygote"] = (utime, stime)
        parts["children"] = (cutime, cstime)
    return parts


def _cpu_seconds(zygote_pid: int) -> float:
    """CPU used so far by this process (all threads) plus the zygote and its reaped children."""
    return sum(u + s for u, s in _cpu_parts(zygote_pid).values())


def _idle_fraction(seconds: float = 1.0) -> float:
    b0, t0 = _machine_jiffies()
    time.sleep(seconds)
    b1, t1 = _machine_jiffies()
    return 1 - (b1 - b0) / max(1, t1 - t0)


def _burn(n: int) -> None:
    x = 0
    for i in range(n):
        x += i


def _burn_wall(n: int, procs: int) -> float:
    """Wall time for ``procs`` forked processes that each run ``_burn(n)`` at the same time.

    Plain forks: the children do nothing but the loop, so start-up (spawning an
    interpreter, a ``multiprocessing.Pool``'s workers and pickling) is not part of
    the time. The benchmark is multi-threaded by now, but a child that only
    loops and ``os._exit``s needs no lock another thread might hold.
    """
    t = time.perf_counter()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                _burn(n)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return time.perf_counter() - t


def machine_scaling(seconds: float = 0.5, rounds: int = 3) -> float:
    """How much two CPU-bound processes gain over one on this machine right now (2.0 = two free cores).

    Each process burns about ``seconds`` of CPU (a ~0.15 s burn through
    ``multiprocessing.Pool`` measured pool start-up and scheduling noise and
    reported 1.3x where two plain processes reach 1.8-1.95x). One and two
    processes alternate ``rounds`` times; the best time of each is used, since
    other load on the machine can only make a run slower.
    """
    n = 200_000
    while (took := _burn_wall(n, 1)) < 0.05:
        n *= 4
    n = int(n * seconds / took)
    one, two = [], []
    for _ in range(rounds):
        one.append(_burn_wall(n, 1))
        two.append(_burn_wall(n, 2))
    return 2 * min(one) / min(two)


def _pipe_echo(conn) -> None:  # type: ignore[no-untyped-def]
    while True:
        msg = conn.recv()
        if msg is None:
            return
        conn.send(msg)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput run")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    n = args.n

    class Trusted:
        @hookimpl
        def karen_run(self, intent, params, ctx):  # type: ignore[no-untyped-def]
            return {"echo": params}

    pm = pluggy.PluginManager("karen")
    pm.add_hookspecs(hookspecs)
    pm.register(Trusted())

    plugdir = tempfile.mkdtemp(prefix="karen-bench-")
    os.chmod(plugdir, 0o755)
    (Path(plugdir) / "handler.py").write_text(HANDLER)
    os.chmod(Path(plugdir) / "handler.py", 0o644)
    spec = PluginSpec(name="bench", kind="directory", target="handler.py", path=plugdir, code_paths=(plugdir,))
    spec2 = PluginSpec(name="bench2", kind="directory", target="handler.py", path=plugdir, code_paths=(plugdir,))
    kwargs = {"intent": "bench.echo", "params": {"x": 1}, "ctx": CTX}
    fork, warm = PluginSettings(), PluginSettings(mode="warm", warm_max_calls=1_000_000)
    limits = Limits()

    ex = SandboxExecutor()
    print(format_doctor(ex.layers()))
    print()
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_pipe_echo, args=(child,), daemon=True)
    proc.start()

    def pipe_rt() -> None:
        parent.send({"x": 1})
        parent.recv()

    rows = {
        "trusted in-process call": median_ms(lambda: pm.hook.karen_run(intent="bench.echo", params={"x": 1}, ctx=None),
                                             n * 10),
        "sandboxed fork-per-call (all layers)": median_ms(
            lambda: ex.call_sync(spec, "karen_run", kwargs, fork, limits), n),
        "sandboxed warm-mode call": median_ms(lambda: ex.call_sync(spec, "karen_run", kwargs, warm, limits), n * 5),
        'subprocess.run([python, "-I", "-S", "-c", "pass"])': median_ms(
            lambda: subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True), n),
        "multiprocessing Pipe round trip": median_ms(pipe_rt, n * 10),
    }
    parent.send(None)
    proc.join(5)

    idle = _idle_fraction()
    scaling = machine_scaling()
    zpid = ex._zygote().pid
    p0 = _cpu_parts(zpid)
    calls = 200
    for _ in range(calls):
        ex.call_sync(spec, "karen_run", kwargs, fork, limits)
    time.sleep(0.5)  # let the last cleanup and standby fork land in the numbers
    p1 = _cpu_parts(zpid)
    cpu_parts = {k: ((p1[k][0] - p0[k][0]) / calls, (p1[k][1] - p0[k][1]) / calls) for k in p0}
    cpu_per_call = sum(u + s for u, s in cpu_parts.values())
    run1 = throughput(lambda: ex.call_sync(spec, "karen_run", kwargs, fork, limits), 1, args.seconds, zpid)
    run2 = throughput(lambda: ex.call_sync(spec, "karen_run", kwargs, fork, limits), 2, args.seconds, zpid)
    # The same code with one CPU per caller: one caller confined to one CPU against two callers
    # on two. Shows whether anything serialises callers, which the ratio above cannot show
    # when one caller already keeps both CPUs busy.
    all_cpus = os.sched_getaffinity(0)
    pinned_one = None
    if len(all_cpus) >= 2:
        pin({min(all_cpus)}, zpid)
        try:
            pinned_one = throughput(lambda: ex.call_sync(spec, "karen_run", kwargs, fork, limits), 1,
                                    args.seconds, zpid)
        finally:
            pin(all_cpus, zpid)
    one, two = run1.rate, run2.rate
    specs = [spec, spec2]
    if pinned_one is not None:
        pinned_two = throughput(lambda: ex.call_sync(spec, "karen_run", kwargs, fork, limits), 2, args.seconds, zpid)
    warm_one = throughput(lambda: ex.call_sync(spec, "karen_run", kwargs, warm, limits), 1, args.seconds,
                          zpid).rate
    idx = threading.local()
    counter = iter(range(1_000_000))
    pick = threading.Lock()

    def warm_call() -> None:
        if not hasattr(idx, "spec"):
            with pick:
                idx.spec = specs[next(counter) % 2]
        ex.call_sync(idx.spec, "karen_run", kwargs, warm, limits)

    # two callers of two different warm plugins (a warm worker serves one call at a time)
    warm_two = throughput(warm_call, 2, args.seconds, zpid).rate
    ex.close()
    shutil.rmtree(plugdir, ignore_errors=True)

    width = max(len(k) for k in rows)
    print(f"{'path'.ljust(width)}  median ms")
    for k, v in rows.items():
        print(f"{k.ljust(width)}  {v:9.4f}")
    spawn = rows['subprocess.run([python, "-I", "-S", "-c", "pass"])']
    forkc = rows["sandboxed fork-per-call (all layers)"]
    warmc = rows["sandboxed warm-mode call"]
    print()
    print(f"fork-per-call / bare spawn   = {forkc / spawn:.2f}   (target <= 0.50)")
    print(f"warm-mode median             = {warmc:.3f} ms (target < 0.5 ms)")
    print(f"machine idle before the runs : {idle:.0%} of {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} (other work on the machine caps what 2 callers can gain)")
    print(f"machine's own 2-process gain = {scaling:.2f}x for pure CPU work (the ceiling for the ratios below)")
    print(f"fork-per-call CPU per call   = {cpu_per_call * 1000:.1f} ms (host + zygote + children), so at most "
          f"{(os.cpu_count() or 1) / cpu_per_call:.0f} calls/s on {os.cpu_count()} idle CPUs")
    print("  of which                   : " + ", ".join(
        f"{k} {(u + s) * 1000:.1f} ms (user {u * 1000:.1f}, sys {s * 1000:.1f})" for k, (u, s) in cpu_parts.items()))
    print("                               (zygote: forking; children: fork faults, layers, the call, exit)")
    print(f"fork-per-call, 1 caller      : {run1}")
    print(f"fork-per-call, 2 callers     : {run2}")
    print(f"fork-per-call throughput     : 1 caller {one:.1f}/s, 2 callers {two:.1f}/s = {two / one:.2f}x (target >= 1.7x)")
    # Two callers can at most use every CPU: if one caller already keeps k of them busy (the
    # standby fork and the last call's exit run beside the current call), the gain is <= ncpu / k
    # at the same CPU per call.
    ncpu = os.cpu_count() or 1
    print(f"  ceiling at this CPU per call: {ncpu} CPUs / {run1.own_cpus:.2f} used by one caller = "
          f"{ncpu / max(run1.own_cpus, 1e-9):.2f}x")
    if pinned_one is not None:
        print(f"one CPU per caller           : 1 caller on 1 CPU {pinned_one.rate:.1f}/s, 2 callers on 2 CPUs "
              f"{pinned_two.rate:.1f}/s = {pinned_two.rate / pinned_one.rate:.2f}x "
              "(>= 1.7x: no lock serialises callers; the gap to the line above is what a lone caller "
              "gains from the second CPU)")
    print(f"warm-mode throughput         : 1 caller {warm_one:.1f}/s, 2 callers {warm_two:.1f}/s = "
          f"{warm_two / warm_one:.2f}x")
    results = {"median_ms": rows, "fork_over_spawn": forkc / spawn, "idle_fraction": idle,
               "machine_2proc_scaling": scaling,
               "fork_cpu_ms_per_call": cpu_per_call * 1000,
               "fork_cpu_ms_per_call_parts": {k: {"user": u * 1000, "sys": s * 1000} for k, (u, s) in cpu_parts.items()},
               "fork_cpus_used": {"1": [run1.own_cpus, run1.machine_cpus], "2": [run2.own_cpus, run2.machine_cpus]},
               "fork_ratio_ceiling": (os.cpu_count() or 1) / max(run1.own_cpus, 1e-9),
               "fork_one_cpu_per_caller": None if pinned_one is None else {
                   "1_on_1": pinned_one.rate, "2_on_2": pinned_two.rate, "ratio": pinned_two.rate / pinned_one.rate},
               "throughput": {
        "fork_1": one, "fork_2": two, "fork_ratio": two / one, "warm_1": warm_one, "warm_2": warm_two,
        "warm_ratio": warm_two / warm_one}}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ok = forkc / spawn <= 0.5 and warmc < 0.5 and two / one >= 1.7
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
