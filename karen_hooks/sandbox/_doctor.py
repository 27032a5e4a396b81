"""Which sandbox layers are active on this machine, and loud warnings when one is not."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any


class SandboxLayerWarning(RuntimeWarning):
    """A sandbox layer is unavailable on this machine (the others still apply)."""


@dataclass(frozen=True)
class LayerStatus:
    name: str
    active: bool
    detail: str


#: name -> what the layer stops (shown by ``karen sandbox doctor``).
LAYERS: dict[str, str] = {
    "exec_zygote": "host memory/secrets: children fork from an exec'd zygote with an empty environment",
    "session": "a fresh session and process group per call (setsid)",
    "rlimits": "CPU seconds, address space, open files, file size, process count",
    "uid": "a dedicated unprivileged uid per slot: RLIMIT_NPROC bites, no signals to the host",
    "netns": "a private network namespace: no route to any host or 127.0.0.1",
    "seccomp": ("socket(), new namespaces (unshare, setns, clone flags; clone3 is ENOSYS) and dangerous "
                "syscalls (ptrace, mount, bpf, io_uring, System V IPC, ...) fail with EPERM"),
    "landlock_fs": "only the plugin's own files, Python and its work dir are reachable",
    "landlock_net": "TCP bind/connect denied",
    "landlock_scope": "no signals or abstract unix sockets outside the sandbox",
    "cgroup_memory": "resident memory cap, OOM kill inside the sandbox only",
    "cgroup_pids": "process/thread cap; every process of a call is killed when it ends",
    "subreaper": "orphans (double-fork daemons) are reaped by the zygote",
    "workdir_quota": "a size- and inode-capped tmpfs work dir per call",
}


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def statuses_from(child: dict[str, list[Any]], cgroups: Any, tmpfs_ok: bool, tmpfs_why: str) -> list[LayerStatus]:
    out = [LayerStatus("exec_zygote", True, "python -I, empty environment, close_fds, new session")]
    for name in ("session", "rlimits", "uid", "netns", "seccomp"):
        ok, detail = child.get(name, [False, "not reported"])
        out.append(LayerStatus(name, bool(ok), str(detail) or LAYERS[name]))
    abi = child.get("landlock_abi", [False, "0"])
    ll_err = child.get("landlock", [False, "Landlock unavailable"])[1]
    for name, need in (("landlock_fs", 1), ("landlock_net", 4), ("landlock_scope", 6)):
        ok = bool(child.get(name, [False])[0])
        if ok:
            detail = f"ABI {abi[1]}"
        elif not abi[0]:
            detail = f"Landlock unavailable: {ll_err}"
        elif _as_int(abi[1]) < need:
            detail = f"kernel Landlock ABI {abi[1]} < {need}"
        else:  # the kernel is new enough; building or applying the ruleset failed
            detail = f"Landlock ABI {abi[1]} but the layer could not be applied: {ll_err}"
        out.append(LayerStatus(name, ok, detail))
    if cgroups.active:
        kind = "v2" if cgroups.v2 else "v1"
        for ctrl in ("memory", "pids"):
            out.append(LayerStatus(f"cgroup_{ctrl}", True, f"cgroup {kind} {cgroups.roots[ctrl]}"))
    else:
        # say what is lost, not just the errno: these are the two gaps of a non-root host
        lost = {"memory": "resident memory is bounded only by RLIMIT_AS per process",
                "pids": "processes are capped only as the rlimits layer says, and a double-forked "
                        "daemon is found only as an orphan of the zygote (see subreaper)"}
        for ctrl in ("memory", "pids"):
            out.append(LayerStatus(f"cgroup_{ctrl}", False, f"no writable cgroup ({cgroups.problem}): {lost[ctrl]}"))
    ok, detail = child.get("subreaper", [False, "not reported"])
    out.append(LayerStatus("subreaper", bool(ok), str(detail)))
    out.append(LayerStatus("workdir_quota", tmpfs_ok, tmpfs_why))
    return out


def doctor() -> list[LayerStatus]:
    """Start a sandbox, report which layers it applied, stop it."""
    import warnings

    from ._executor import SandboxExecutor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxLayerWarning)
        ex = SandboxExecutor(slots=1)
        ex._reported = True  # doctor prints; no duplicate warnings
        try:
            return ex.layers()
        finally:
            ex.close()


def format_doctor(statuses: list[LayerStatus]) -> str:
    width = max(len(s.name) for s in statuses)
    lines = [f"{'layer'.ljust(width)}  state    detail"]
    for s in statuses:
        state = "active " if s.active else "MISSING"
        lines.append(f"{s.name.ljust(width)}  {state}  {s.detail or LAYERS.get(s.name, '')}")
    missing = [s.name for s in statuses if not s.active]
    lines.append("")
    lines.append("all layers active" if not missing else f"WARNING: {len(missing)} layer(s) missing: {', '.join(missing)}")
    return "\n".join(lines)


def report_layers(logger: logging.Logger | None = None, statuses: list[LayerStatus] | None = None) -> list[LayerStatus]:
    """Log every missing layer at WARNING (and each active one at DEBUG)."""
    logger = logger or logging.getLogger("karen_hooks.sandbox")
    statuses = doctor() if statuses is None else statuses
    for s in statuses:
        if s.active:
            logger.debug("sandbox layer %s active: %s", s.name, s.detail)
        else:
            logger.warning("sandbox layer %s is MISSING on this machine: %s", s.name, s.detail)
    return statuses
