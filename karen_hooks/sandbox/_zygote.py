"""The zygote: an exec'd, secret-free process that forks one sandbox child per call.

Started by the host as ``python -I -c <bootstrap> <ctrl-fd>`` with an empty
environment, a fresh session and no inherited descriptors but its control
socket (a unix SOCK_SEQPACKET). It never runs plugin code itself. For each
``spawn`` request the host passes three descriptors (protocol socket, stdout
pipe, stderr pipe) with SCM_RIGHTS; the zygote forks a child that applies every
layer (see :mod:`._layers`) and then serves the call over the protocol socket.
The zygote is a child subreaper, reaps every child and reports exit statuses.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import select
import signal
import socket
import sys
from typing import Any

from . import _layers

_CTRL_MAX = 1 << 20


def _send(ctrl: socket.socket, obj: dict[str, Any]) -> None:
    try:
        ctrl.send(json.dumps(obj).encode())
    except OSError:
        os._exit(0)  # host gone: nothing left to serve


def _probe(cfg: dict[str, Any], z: Any) -> dict[str, Any]:
    """Fork a throwaway child that applies every layer best-effort and reports."""
    from ._child import apply_layers

    ruleset = _ruleset(cfg, z)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            status = apply_layers(cfg, z, ruleset, strict=False)
        except BaseException as exc:  # pragma: no cover - reported to the host
            status = {"_error": [False, repr(exc)]}
        os.write(w, json.dumps(status).encode())
        os._exit(0)
    os.close(w)  # the ruleset fd stays open: cached in the context (the child closed its copy)
    data = _layers.read_to_eof(r)
    os.waitpid(pid, 0)
    try:
        return dict(json.loads(data.decode()))
    except ValueError:
        return {"_error": [False, "probe child died"]}


def _ruleset(cfg: dict[str, Any], z: Any) -> int | None:
    if z.abi < 1:
        z.status["landlock"] = [False, "the kernel has no Landlock (ABI 0)"]
        return None
    try:
        fd, _sub = z.ruleset(list(cfg["read_paths"]), list(cfg["write_paths"]))
    except OSError as exc:
        z.status["landlock"] = [False, str(exc)]
        return None
    return int(fd)


def _userns_netns(direct: OSError, tmpfs: list[Any] | None = None,
                  status: dict[str, list[Any]] | None = None) -> list[Any]:
    """The network namespace without CAP_SYS_ADMIN: inside an unprivileged user namespace.

    Only for a host that is not root (root keeps the plain namespace, or none, so its
    children can still switch to their dedicated uids). Runs before anything is forked
    or seccomp is loaded (which denies ``unshare``); on return the zygote holds no
    capabilities, so neither does any child. A failure to finish the setup once inside
    the user namespace is a RuntimeError and ends the zygote: the host reports that the
    sandbox did not start rather than run plugins with capabilities.

    ``tmpfs`` (slot dirs, MiB, inodes) asks for the work dirs' capped tmpfs in a private
    mount namespace too; how that went is recorded in ``status["workdir_quota"]``.
    """
    if os.geteuid() == 0:
        return [False, str(direct)]
    from ._userns import trial, unshare_user_net

    why = trial()
    if why:
        return [False, f"{direct}; and no unprivileged user namespace to create one in: {why}"]
    try:
        detail, problem = unshare_user_net(([str(p) for p in tmpfs[0]], int(tmpfs[1]), int(tmpfs[2])) if tmpfs else None)
    except OSError as exc:  # worked in the trial child: only a race or a limit (max_user_namespaces)
        return [False, f"{direct}; and no unprivileged user namespace to create one in: {exc}"]
    if tmpfs and status is not None:
        status["workdir_quota"] = [problem is None, problem or (
            f"a tmpfs of {tmpfs[1]} MiB and {tmpfs[2]} inodes per slot in the zygote's own mount namespace, "
            "a fresh dir in it per call")]
    return [True, detail]


def _slot_namespaces(slots: int) -> tuple[dict[int, int], str]:
    """A user namespace per slot (descriptors by slot index), or none and why not.

    Only in the zygote's own user namespace (a host that is not root) on a kernel that
    counts RLIMIT_NPROC per namespace: there, a call child in its slot's namespace is
    capped by its own processes, not by every call's together.
    """
    from ._userns import slot_namespace

    made: dict[int, int] = {}
    try:
        for i in range(slots):
            made[i] = slot_namespace()
    except OSError as exc:
        for fd in made.values():
            os.close(fd)
        return {}, str(exc)
    return made, ""


def _reserve_low_fds(ctrl_fd: int) -> int:
    """Move the control socket high and fill fds 3..9 so children can dup2 onto them."""
    high = fcntl.fcntl(ctrl_fd, fcntl.F_DUPFD_CLOEXEC, 100)
    os.close(ctrl_fd)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in range(3, 10):
        if fd != null:
            try:
                os.fstat(fd)
            except OSError:
                os.dup2(null, fd, inheritable=False)
    return high


def main(ctrl_fd: int) -> None:
    # Pre-import what every child needs, so forks start warm.
    import asyncio  # noqa: F401
    import importlib.util  # noqa: F401
    import inspect  # noqa: F401
    import traceback  # noqa: F401

    import pluggy  # noqa: F401
    import pydantic  # noqa: F401

    import karen_hooks  # noqa: F401
    import karen_hooks._models  # noqa: F401
    import karen_hooks.hookspecs  # noqa: F401

    from . import _child, _protocol  # noqa: F401

    try:
        import karen_hooks._prompts  # noqa: F401
    except Exception:
        pass

    ctrl = socket.socket(fileno=_reserve_low_fds(ctrl_fd))
    hello = json.loads(ctrl.recv(_CTRL_MAX).decode())
    probe_cfg = dict(hello["probe"])
    status: dict[str, list[Any]] = {}
    own_userns = False
    try:
        _layers.set_subreaper()
        status["subreaper"] = [True, "PR_SET_CHILD_SUBREAPER"]
    except OSError as exc:
        status["subreaper"] = [False, str(exc)]
    try:
        # One private, empty network namespace for the zygote and all its
        # children: no interface but a down loopback, created once (not per call).
        _layers.unshare_net()
        status["netns"] = [True, "private empty network namespace"]
    except OSError as exc:
        status["netns"] = _userns_netns(exc, probe_cfg.get("workdir_tmpfs"), status)
        own_userns = bool(status["netns"][0])
    ok, why = _layers.seccomp_available()
    filt = None
    if ok:
        try:
            filt = _layers.build_seccomp_filter()
        except Exception as exc:
            why = f"building the filter failed: {exc}"
    abi = _layers.landlock_abi()
    z = _child.ZygoteContext(filt, abi, int(probe_cfg.get("uid", -1)), int(probe_cfg.get("gid", -1)))
    if filt is not None:
        try:
            z.child_bpf = _layers.child_filter_bpf()
        except Exception as exc:  # noqa: BLE001 - then the seccomp layer is reported missing
            filt, why = None, f"building the call children's filter failed: {exc}"
            z.filt = None
    z.status.update(status)
    z.nproc_in_userns = own_userns and _layers.nproc_counted_per_userns()
    if z.nproc_in_userns:  # before seccomp, which denies making namespaces
        z.slot_userns, z.slot_userns_problem = _slot_namespaces(int(probe_cfg.get("slots", 0)))
    z.add_aliases(list(probe_cfg["read_paths"]))
    z.rewrite_imports()
    status.update(_probe(probe_cfg, z))
    if filt is None:
        status["seccomp"] = [False, why]
    elif status.get("seccomp", [False])[0] and not z.slot_userns:
        # Loaded once here and inherited by every child: installing a filter costs the
        # kernel ~0.4 ms per process. From here on the zygote needs none of the denied
        # syscalls (its network namespace is already set up). If this fails, every
        # child loads the filter itself as before; so does every child that must first
        # join its slot's user namespace (setns, which the filter denies), off the
        # call's path in the standby.
        try:
            filt.load()
            z.seccomp_loaded = True
        except Exception:  # noqa: BLE001
            pass
    status["landlock_abi"] = [abi > 0, str(abi)]
    # No cgroup on the host (not root): a double-forked setsid daemon would outlive its call
    # (and the host). Kill every orphan this subreaper adopts instead (see _layers.kill_orphans).
    orphans = bool(probe_cfg.get("kill_orphans"))
    if orphans and status.get("subreaper", [False])[0]:
        status["subreaper"] = [True, "PR_SET_CHILD_SUBREAPER; no cgroup, so every orphan the zygote adopts "
                                     "(a double-forked daemon) is killed when the zygote next reaps a child"]
    # the host sweeps these too when this zygote dies (what a cgroup kill would reach)
    slot_ns = [os.readlink(f"/proc/self/fd/{fd}") for fd in z.slot_userns.values()]
    _send(ctrl, {"op": "hello", "pid": os.getpid(), "layers": status, "slot_userns": slot_ns})

    children: dict[int, str] = {}
    rpipe, wpipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wpipe)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    gc.freeze()

    while True:
        try:
            ready, _, _ = select.select([ctrl.fileno(), rpipe], [], [])
        except InterruptedError:
            continue
        if rpipe in ready:
            try:
                os.read(rpipe, 4096)
            except BlockingIOError:
                pass
            _reap(ctrl, children)
            if orphans:
                _layers.kill_orphans(children)
        if ctrl.fileno() in ready:
            try:
                data, fds, _flags, _addr = socket.recv_fds(ctrl, _CTRL_MAX, 3)
            except OSError:
                data, fds = b"", []
            if not data:  # the host is gone: so is every process of every call
                for pid in list(children):
                    _kill_group(pid)
                if own_userns:  # also those that left their call's session (setsid)
                    ns = _layers.user_namespace()
                    if ns is not None:
                        _layers.kill_user_namespace(ns, *slot_ns)
                os._exit(0)
            msg = json.loads(data.decode())
            op = msg.get("op")
            if op == "spawn" and len(fds) == 3:
                cfg = msg["cfg"]
                z.add_aliases(list(cfg["read_paths"]))
                ruleset = _ruleset(cfg, z)
                pid = os.fork()
                if pid == 0:
                    _child.child_main(cfg, fds, z, ruleset, msg.get("slot"))
                    os._exit(0)  # pragma: no cover
                for fd in fds:
                    os.close(fd)
                children[pid] = msg["id"]
                _send(ctrl, {"op": "started", "id": msg["id"], "pid": pid})
            elif op == "prepare":
                # A standby child for the slot; the host gets its socket and hands it a
                # call directly, so the zygote is not on the call's critical path.
                for fd in fds:
                    os.close(fd)
                slot = msg.get("slot")
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                pid = os.fork()
                if pid == 0:
                    a.close()
                    _child.standby_main(b, list(msg.get("cgroup_procs", [])), z, slot)
                    os._exit(0)  # pragma: no cover
                b.close()
                children[pid] = f"standby:{slot}"
                try:
                    socket.send_fds(ctrl, [json.dumps({"op": "prepared", "slot": slot, "pid": pid}).encode()],
                                    [a.fileno()])
                except OSError:
                    os._exit(0)
                finally:
                    a.close()
            elif op == "kill":
                for pid, cid in children.items():
                    if cid == msg.get("id") or pid == msg.get("pid"):
                        _kill_group(pid)
                if orphans:
                    _layers.kill_orphans(children)
            elif op == "exit":
                os._exit(0)
            else:
                for fd in fds:
                    os.close(fd)


def _kill_group(pid: int) -> None:
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except OSError:
            pass


def _reap(ctrl: socket.socket, children: dict[int, str]) -> None:
    while True:
        try:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        cid = children.pop(pid, None)
        if cid is not None:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            _send(ctrl, {"op": "exited", "id": cid, "pid": pid, "signal": sig, "code": code,
                         "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss})
        # orphans adopted as subreaper are simply reaped


if __name__ == "__main__":  # pragma: no cover
    main(int(sys.argv[1]))
