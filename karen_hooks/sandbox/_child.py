"""Runs inside a forked sandbox child: apply the layers, then hand over to :mod:`._serve`.

Nothing here is ever imported into the host process's plugin path; the host
only talks JSON frames to it over descriptor 3.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import stat
import sys
from typing import Any

from . import _layers
from ._protocol import read_frame, write_frame
from ._serve import PROTO_FD, _rewrite, _serve

# ---------------------------------------------------------------- layers


def _reachable(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` can traverse every ancestor of ``path`` and read it."""
    path = os.path.abspath(path)
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        p = "/".join(parts[:i]) or "/"
        try:
            st = os.stat(p)
        except OSError:
            return False
        need = stat.S_IXOTH | (stat.S_IROTH if p == path else 0)
        if st.st_uid == uid:
            need <<= 6
        elif st.st_gid == gid:
            need <<= 3
        if st.st_mode & need != need:
            return False
    return True




class ZygoteContext:
    """What the zygote prepares once and every child inherits.

    The network namespace (entered by the zygote itself), the seccomp filter,
    O_PATH aliases for directories the sandbox uid cannot traverse, and a cache
    of Landlock ruleset fds keyed by the paths they allow.
    """

    def __init__(self, filt: Any, abi: int, uid: int, gid: int) -> None:
        self.filt = filt
        self.abi = abi
        self.uid = uid
        self.gid = gid
        self.root = os.geteuid() == 0 and uid > 0
        self.aliases: dict[str, str] = {}
        self._checked: set[str] = set()
        self.alias_fds: set[int] = set()
        self.alias_fd: dict[str, int] = {}
        self.rulesets: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[int, dict[str, bool]]] = {}
        self.status: dict[str, list[Any]] = {}
        self.seccomp_loaded = False
        # the zygote made a user namespace of its own (a host that is not root) and the kernel
        # counts RLIMIT_NPROC per namespace: it then counts only the zygote's and its children's
        self.nproc_in_userns = False
        # and inside it one user namespace per slot (fds by slot index), which each call child
        # joins, so that RLIMIT_NPROC counts one call's processes; or why there are none
        self.slot_userns: dict[int, int] = {}
        self.slot_userns_problem = ""
        self.entered_slot = False
        # the call children's own small filter (sendmsg, ...), as BPF, and whether this child has it
        self.child_bpf = b""
        self.child_bpf_loaded = False

    def load_child_filter(self) -> None:
        """Add the call children's filter on top of the zygote's (once per child)."""
        if self.child_bpf and not self.child_bpf_loaded:
            _layers.no_new_privs()  # required to install a filter without CAP_SYS_ADMIN; harmless to repeat
            _layers.load_bpf(self.child_bpf)
            self.child_bpf_loaded = True

    def add_aliases(self, paths: list[str]) -> None:
        if not self.root:
            return
        for p in paths:
            if p in self._checked:
                continue
            if len(self._checked) < 4096:
                self._checked.add(p)
            if not os.path.isdir(p) or _reachable(p, self.uid, self.gid):
                continue
            fd = os.open(p, os.O_PATH | os.O_DIRECTORY)
            self.alias_fds.add(fd)
            self.alias_fd[p] = fd
            self.aliases[p] = f"/proc/self/fd/{fd}"

    def rewrite_imports(self) -> None:
        """Point ``sys.path`` and every loaded package's ``__path__`` at the aliases.

        Done once in the zygote (root), so lazy imports in the unprivileged
        children resolve through the inherited O_PATH descriptors.
        """
        if not self.aliases:
            return
        sys.path[:] = [_rewrite(p, self.aliases) for p in sys.path]
        for mod in list(sys.modules.values()):
            path = getattr(mod, "__path__", None)
            if isinstance(path, list):
                path[:] = [_rewrite(p, self.aliases) for p in path]
        sys.path_importer_cache.clear()
        importlib.invalidate_caches()

    def ruleset(self, read_paths: list[str], write_paths: list[str]) -> tuple[int, dict[str, bool]]:
        key = (tuple(read_paths), tuple(write_paths))
        got = self.rulesets.get(key)
        if got is None:
            if len(self.rulesets) >= 64:
                old = next(iter(self.rulesets))
                os.close(self.rulesets.pop(old)[0])
            got = self.rulesets[key] = _layers.landlock_ruleset(read_paths, write_paths, self.abi)
            for k, v in got[1].items():
                self.status[k] = [bool(v), f"ABI {self.abi}"]
        return got

    def enter_slot(self, slot: Any) -> None:
        """Join ``slot``'s own user namespace, if the zygote made them (once; raises OSError)."""
        if not self.slot_userns or self.entered_slot:
            return
        fd = self.slot_userns.get(slot) if isinstance(slot, int) else None
        if fd is None:
            raise OSError(f"no user namespace for slot {slot!r}")
        from ._userns import enter_namespace

        enter_namespace(fd)
        self.entered_slot = True

    def keep_fds(self) -> set[int]:
        return set(self.alias_fds)


def enter_session(cgroup_procs: Any) -> None:
    """A fresh session, and membership of the call's cgroup(s)."""
    os.setsid()
    pid = str(os.getpid()).encode()
    for f in cgroup_procs:
        # raw os calls, not open(): building a text file object touches (and so
        # copy-on-write faults) many pages of the io machinery in every child
        fd = os.open(f, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if os.write(fd, pid) != len(pid):
                raise OSError(f"short write to {f}")
        finally:
            os.close(fd)


def apply_layers(
    cfg: dict[str, Any], z: ZygoteContext, ruleset: int | None, strict: bool = True, entered: bool = False
) -> dict[str, list[Any]]:
    """Apply every layer to this (already forked) process. Returns per-layer status.

    With ``strict``, a layer listed in ``cfg["required"]`` that fails aborts.
    ``ruleset`` is the Landlock ruleset fd prepared by the zygote (closed here).
    """
    status: dict[str, list[Any]] = dict(z.status)
    required = set(cfg.get("required", ())) if strict else set()

    def step(name: str, fn: Any) -> Any:
        try:
            res = fn()
            status[name] = [True, "" if res is None or isinstance(res, dict) else str(res)]
            return res
        except Exception as exc:
            status[name] = [False, f"{type(exc).__name__}: {exc}"]
            if name in required:
                raise
            return None

    if not entered:
        enter_session(cfg.get("cgroup_procs", ()))
    status["session"] = [True, "setsid"]
    if "netns" in required and not status.get("netns", [False])[0]:
        raise OSError("network namespace required but the zygote has none")
    os.chdir(cfg["workdir"])
    # Before Landlock: enforcing it needs no_new_privs (or CAP_SYS_ADMIN, which only a root
    # host's child still holds here). It never stops the setuid() below, only execve gains.
    step("no_new_privs", _layers.no_new_privs)
    if ruleset is not None:
        step("landlock", lambda: _layers.landlock_enforce(ruleset))
        os.close(ruleset)
    else:
        status["landlock"] = [False, status.get("landlock", [False, "unavailable"])[1]]
        if "landlock" in required:
            raise OSError("landlock required but no ruleset was built")
    uid, gid = int(cfg.get("uid", -1)), int(cfg.get("gid", -1))
    dedicated = os.geteuid() == 0 and uid > 0
    nproc, rl_detail = _process_cap(cfg, z, dedicated)

    def rlimits() -> str:
        _layers.apply_rlimits(cfg["limits"], int(cfg.get("warm_calls", 1)), nproc=nproc)
        return rl_detail  # what the layer reports

    step("rlimits", rlimits)
    if os.geteuid() == 0 and uid > 0:
        step("uid", lambda: _layers.drop_privileges(uid, gid))
    elif os.geteuid() == 0:
        status["uid"] = [False, "no sandbox uid configured"]
    else:
        status["uid"] = [False, f"host is not root (uid {os.geteuid()}): cannot switch to a dedicated uid"]
    if z.seccomp_loaded:
        status["seccomp"] = [True, "loaded before the call"]
    elif z.filt is not None:
        step("seccomp", z.filt.load)
    elif "seccomp" in required:
        raise OSError("seccomp required but unavailable")
    if z.filt is not None and status.get("seccomp", [False])[0]:
        detail = status["seccomp"][1]  # (kept: the children's own filter is part of the same layer)

        def child_filter() -> str:
            z.load_child_filter()
            return str(detail)

        step("seccomp", child_filter)
    return status


def _process_cap(cfg: dict[str, Any], z: ZygoteContext, dedicated: bool) -> tuple[int, str]:
    """RLIMIT_NPROC for this child (0: none) and how the rlimits layer describes it."""
    base = "CPU seconds, address space, open files, file size, "
    if dedicated:  # the slot's own uid: every process counted is this call's
        return int(cfg["limits"]["processes"]), base + "process count (RLIMIT_NPROC per slot uid)"
    if z.slot_userns:
        # Counted per user namespace (Linux >= 5.14 ucounts), and each slot has one of its own:
        # this call's processes, and the slot's next standby if it is forked meanwhile.
        cap = int(cfg["limits"]["processes"]) + 1
        return cap, (base + f"process count: RLIMIT_NPROC {cap} per call (processes + 1), counted in its "
                     "slot's own user namespace; other calls' and the host's processes are not counted")
    if z.nproc_in_userns:
        # Counted per user namespace (Linux >= 5.14 ucounts): the zygote's, so the processes of all
        # calls together, not the host's. The host sends processes + 2 x slots + 1 (zygote, a
        # standby or call per slot): a call that forks gets its budget while the others don't.
        cap = int(cfg.get("userns_processes") or cfg["limits"]["processes"])
        return cap, (base + f"process count: RLIMIT_NPROC {cap} counted in the zygote's user namespace, "
                     "one budget shared by all calls; the host's own processes are not counted"
                     + (f" (no user namespace per slot: {z.slot_userns_problem})" if z.slot_userns_problem else ""))
    return 0, (base + "no process count: without a dedicated uid or a user namespace, RLIMIT_NPROC "
               "would count every process of the host's uid")


def _close_all_but(keep: set[int]) -> None:
    lo = 0
    for fd in sorted(keep) + [65536]:
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for s in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(s, signal.SIG_DFL)


def child_main(cfg: dict[str, Any], fds: list[int], z: ZygoteContext, ruleset: int | None, slot: Any = None) -> None:
    """Entry point of a child forked for one call. Never returns."""
    try:
        _reset_signals()
        enter_session(cfg.get("cgroup_procs", ()))
    except BaseException:
        os._exit(70)
    _activate(cfg, fds, z, ruleset, slot)


def standby_main(sock: socket.socket, cgroup_procs: list[str], z: ZygoteContext, slot: Any = None) -> None:
    """A child forked ahead of time for one slot: joins its cgroup, then waits for a call.

    Forking, the new session and the (slow, cgroup v1) cgroup migration happen
    before the call arrives, off the call's critical path.
    """
    try:
        _reset_signals()
        enter_session(cgroup_procs)
        z.enter_slot(slot)  # before the seccomp filter, which denies setns
        # keep 0..9 occupied so descriptors received below land at 10+
        _close_all_but({sock.fileno(), *range(10)} | z.keep_fds())
        if z.filt is not None and not z.seccomp_loaded:
            # the filter is the same for every call: load it now, off the critical path
            # (normally the zygote has loaded it already and every child inherits it)
            z.filt.load()
            z.seccomp_loaded = True
        if z.filt is not None:
            z.load_child_filter()
        data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 64)
        if not data:
            os._exit(0)
        msg = json.loads(data.decode())
        sock.close()
        cfg = msg["cfg"]
        has_ruleset = bool(msg.get("ruleset"))
        base = fds[:3]
        ruleset = fds[3] if has_ruleset else None
        for path, fd in zip(msg.get("aliases", []), fds[3 + has_ruleset :], strict=True):
            z.aliases[path] = f"/proc/self/fd/{fd}"
            z.alias_fd[path] = fd
            z.alias_fds.add(fd)
    except BaseException:
        os._exit(71)
    _activate(cfg, base, z, ruleset, slot)


def _activate(cfg: dict[str, Any], fds: list[int], z: ZygoteContext, ruleset: int | None, slot: Any) -> None:
    try:
        proto, out, err = fds
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(proto, PROTO_FD)
        z.enter_slot(slot)  # (a standby has already; here after the dups, so a failure is reported)
        keep = {0, 1, 2, PROTO_FD} | z.keep_fds() | ({ruleset} if ruleset is not None else set())
        _close_all_but(keep)
        os.set_inheritable(PROTO_FD, False)
        apply_layers(cfg, z, ruleset, strict=True, entered=True)
    except BaseException as exc:
        try:
            write_frame(PROTO_FD, {"op": "setup_error", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            os._exit(70)
    env = cfg.get("env", {})
    if cfg.get("env_via_channel"):
        msg = read_frame(PROTO_FD, 1 << 20)
        env = msg.get("env", {}) if msg is not None and msg.get("op") == "env" else {}
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    aliases = z.aliases
    cfg["_aliases"] = aliases
    sys.path[:] = [_rewrite(p, aliases) for p in list(cfg.get("code_paths", ())) + sys.path]
    sys.dont_write_bytecode = True
    code = 0
    try:
        _serve(cfg, aliases)
    except BaseException:
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(code)

