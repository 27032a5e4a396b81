"""Runs inside a forked sandbox child: apply the layers, then serve calls.

Nothing here is ever imported into the host process's plugin path; the host
only talks JSON frames to it over descriptor 3.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import os
import signal
import socket
import stat
import sys
import traceback
from typing import Any

from . import _layers
from ._protocol import read_frame, write_frame

PROTO_FD = 3
_MEMORY_METHODS = ("write", "read", "delete", "list")


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


def _rewrite(path: str, aliases: dict[str, str]) -> str:
    for real, alias in sorted(aliases.items(), key=lambda kv: -len(kv[0])):
        if path == real or path.startswith(real + "/"):
            return alias + path[len(real):]
    return path


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

    def keep_fds(self) -> set[int]:
        return set(self.alias_fds)


def enter_session(cgroup_procs: Any) -> None:
    """A fresh session, and membership of the call's cgroup(s)."""
    os.setsid()
    for f in cgroup_procs:
        with open(f, "w") as fh:
            fh.write(str(os.getpid()))


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
    if ruleset is not None:
        step("landlock", lambda: _layers.landlock_enforce(ruleset))
        os.close(ruleset)
    else:
        status["landlock"] = [False, status.get("landlock", [False, "unavailable"])[1]]
        if "landlock" in required:
            raise OSError("landlock required but no ruleset was built")
    uid, gid = int(cfg.get("uid", -1)), int(cfg.get("gid", -1))
    dedicated = os.geteuid() == 0 and uid > 0
    step("rlimits", lambda: _layers.apply_rlimits(cfg["limits"], int(cfg.get("warm_calls", 1)), nproc=dedicated))
    if os.geteuid() == 0 and uid > 0:
        step("uid", lambda: _layers.drop_privileges(uid, gid))
    elif os.geteuid() == 0:
        status["uid"] = [False, "no sandbox uid configured"]
    else:
        status["uid"] = [False, f"host is not root (uid {os.geteuid()}): cannot switch to a dedicated uid"]
    step("no_new_privs", _layers.no_new_privs)
    if z.seccomp_loaded:
        status["seccomp"] = [True, "loaded before the call"]
    elif z.filt is not None:
        step("seccomp", z.filt.load)
    elif "seccomp" in required:
        raise OSError("seccomp required but unavailable")
    return status


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


def child_main(cfg: dict[str, Any], fds: list[int], z: ZygoteContext, ruleset: int | None) -> None:
    """Entry point of a child forked for one call. Never returns."""
    try:
        _reset_signals()
        enter_session(cfg.get("cgroup_procs", ()))
    except BaseException:
        os._exit(70)
    _activate(cfg, fds, z, ruleset)


def standby_main(sock: socket.socket, cgroup_procs: list[str], z: ZygoteContext) -> None:
    """A child forked ahead of time for one slot: joins its cgroup, then waits for a call.

    Forking, the new session and the (slow, cgroup v1) cgroup migration happen
    before the call arrives, off the call's critical path.
    """
    try:
        _reset_signals()
        enter_session(cgroup_procs)
        # keep 0..9 occupied so descriptors received below land at 10+
        _close_all_but({sock.fileno(), *range(10)} | z.keep_fds())
        if z.filt is not None:
            # the filter is the same for every call: load it now, off the critical path
            z.filt.load()
            z.seccomp_loaded = True
        _warm_up()
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
    _activate(cfg, base, z, ruleset)


def _warm_up() -> None:
    """Run, before the call arrives, the host-written code paths every call takes.

    A freshly forked child pays a copy-on-write page fault for every page it
    touches first; doing the common work (loading a module from a file, a
    ``PluginContext``, JSON round trips) while waiting moves those faults off
    the call's critical path. Only karen-hooks' own code runs here.
    """
    try:
        from karen_hooks._models import PluginContext

        from . import _protocol

        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_warmup.py")
        mspec = importlib.util.spec_from_file_location("karen_sandbox_warmup", path)
        if mspec is not None and mspec.loader is not None:
            mod = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(mod)
            inspect.signature(mod.run)
            ctx = PluginContext(user_id="u", tenant_id="t", roles=["r"], intent="i", plugin="p", memory=_MemoryProxy())
            result = mod.run({"a": [1, 2.5, "x", None, True]}, ctx)
            frame = _protocol.encode({"op": "result", "ok": True, "result": _jsonable(result)})
            _protocol.decode(frame[4:])
    except Exception:  # noqa: BLE001 - an optimisation only
        pass


def _activate(cfg: dict[str, Any], fds: list[int], z: ZygoteContext, ruleset: int | None) -> None:
    try:
        proto, out, err = fds
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(proto, PROTO_FD)
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


# ---------------------------------------------------------------- serving


class _MemoryProxy:
    """``ctx.memory`` inside the sandbox: every call is an RPC to the host."""

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            json.dumps([args, kwargs], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"ctx.memory.{method}() arguments must be JSON data: {exc}") from None
        write_frame(PROTO_FD, {"op": "memory", "method": method, "args": list(args), "kwargs": kwargs})
        resp = read_frame(PROTO_FD)
        if resp is None:
            raise RuntimeError("host closed the sandbox channel")
        if resp.get("ok"):
            return resp.get("value")
        from karen_hooks._errors import MemoryBackendError

        raise MemoryBackendError(str(resp.get("error", "memory operation failed")))

    def write(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("write", *args, **kwargs)

    def read(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("read", *args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("delete", *args, **kwargs)

    def list(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("list", *args, **kwargs)


class _Plugin:
    def __init__(self, cfg: dict[str, Any], aliases: dict[str, str]) -> None:
        spec = cfg["spec"]
        self.kind = spec["kind"]
        self.name = spec["name"]
        self.target = str(spec.get("target") or "")
        self.path = _rewrite(spec["path"], aliases) if spec.get("path") else None
        self.pm: Any = None
        self.module: Any = None
        if self.kind == "directory":
            folder = _rewrite(spec["path"], aliases)
            target = spec.get("target") or "handler.py"
            if "/" in target or target.startswith("."):
                raise ValueError(f"directory plugin module must be a file name, got {target!r}")
            sys.path.insert(0, folder)
            modname = "karen_dirplugin_" + "".join(c if c.isalnum() else "_" for c in self.name)
            mspec = importlib.util.spec_from_file_location(modname, os.path.join(folder, target))
            if mspec is None or mspec.loader is None:
                raise ImportError(f"cannot load {target} from {spec['path']}")
            mod = importlib.util.module_from_spec(mspec)
            sys.modules[modname] = mod
            mspec.loader.exec_module(mod)
            self.module = mod
        else:
            import pluggy

            import karen_hooks.hookspecs

            modname, _, attr = spec["target"].partition(":")
            obj: Any = importlib.import_module(modname.strip())
            for part in filter(None, attr.strip().split(".")):
                obj = getattr(obj, part)
            pm = pluggy.PluginManager("karen")
            pm.add_hookspecs(karen_hooks.hookspecs)
            pm.register(obj, name=self.name)
            self.pm = pm

    def intents(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from karen_hooks._models import Intent

        if self.pm is None:
            return [], {}
        raw = _await(self.pm.hook.karen_intent())
        if raw is None:
            raw = []
        if not isinstance(raw, (list, tuple)):
            raise TypeError(f"karen_intent must return a list, got {type(raw).__name__}")
        out, models = [], {}
        for item in raw:
            it = item if isinstance(item, Intent) else Intent.model_validate(item)
            out.append(it.to_json())
            if it.params_model is not None:
                models[it.name] = it.params_model
        return out, models

    def call(self, hook: str, kwargs: dict[str, Any]) -> Any:
        from karen_hooks._models import PluginContext

        if hook == "describe" or hook == "karen_intent":
            return {"intents": self.intents()[0]}
        ctx = None
        if isinstance(kwargs.get("ctx"), dict):
            c = kwargs["ctx"]
            ctx = PluginContext(
                user_id=str(c.get("user_id", "")), tenant_id=c.get("tenant_id"), roles=list(c.get("roles") or []),
                intent=str(c.get("intent", kwargs.get("intent", ""))), plugin=str(c.get("plugin", self.name)),
                memory=_MemoryProxy(),
            )
        intent = kwargs.get("intent", "")
        params = kwargs.get("params") or {}
        if hook == "karen_run":
            if self.module is not None:
                run = self.module.run
                try:
                    nargs = len(inspect.signature(run).parameters)
                except (TypeError, ValueError):
                    nargs = 1
                return _await(run(params, ctx) if nargs >= 2 else run(params))
            model = self.intents()[1].get(intent)
            if model is not None:
                params = model.model_validate(params)
            return _await(self.pm.hook.karen_run(intent=intent, params=params, ctx=ctx))
        if hook == "karen_render_prompt":
            template = kwargs.get("template")
            root = None
            if self.module is None:
                got = _await(self.pm.hook.karen_render_prompt(intent=intent, params=params, ctx=ctx))
                template = got if got is not None else template
            if template is None:
                return None
            if not isinstance(template, str):
                raise TypeError(f"karen_render_prompt must return a str, got {type(template).__name__}")
            from karen_hooks import _prompts

            finder = getattr(_prompts, "spec_template_root", None)
            if finder is not None:
                from karen_hooks._models import PluginSpec

                root = finder(PluginSpec(name=self.name, kind=self.kind, target=self.target, path=self.path))
            return _prompts.render_template(template, kwargs.get("variables") or {}, template_root=root)
        if hook == "karen_ui_component":
            if self.pm is None:
                fn = getattr(self.module, "ui_component", None)
                return _await(fn(intent, kwargs.get("result"), ctx)) if fn else None
            return _await(self.pm.hook.karen_ui_component(intent=intent, result=kwargs.get("result"), ctx=ctx))
        raise ValueError(f"unknown hook {hook!r}")


def _await(value: Any) -> Any:
    if inspect.iscoroutine(value):
        return asyncio.run(value)
    return value


# Captured before any plugin code runs: a plugin that monkeypatches json.dumps
# must not be able to corrupt the reply framing by accident.
_ENCODE = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


def _jsonable(value: Any) -> Any:
    try:
        from pydantic import BaseModel

        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
    except Exception:
        pass
    _ENCODE(value)  # raises TypeError/ValueError
    return value


def _classify(exc: BaseException) -> tuple[str, str] | None:
    import errno

    if isinstance(exc, MemoryError):
        return "memory", "MemoryError"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return "open_files", str(exc)
        if exc.errno == errno.EFBIG:
            return "file_size", str(exc)
        if exc.errno == errno.ENOSPC:
            return "file_size", f"work dir full: {exc}"
        if exc.errno == errno.EAGAIN and isinstance(exc, BlockingIOError):
            return "processes", str(exc)
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "processes", str(exc)
    return None


def _run_one(plugin: _Plugin | None, cfg: dict[str, Any], req: dict[str, Any]) -> tuple[dict[str, Any], _Plugin | None]:
    try:
        if plugin is None:
            plugin = _Plugin(cfg, cfg.get("_aliases", {}))
        result = plugin.call(str(req.get("hook")), req.get("kwargs") or {})
    except BaseException as exc:
        lim = _classify(exc)
        if lim is not None:
            return {"op": "result", "ok": False, "kind": "limit", "limit": lim[0], "message": lim[1]}, plugin
        try:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except BaseException:
            tb = ""
        return {"op": "result", "ok": False, "kind": "error", "type": type(exc).__name__,
                "message": str(exc)[:4000], "traceback": tb[-65536:]}, plugin
    try:
        return {"op": "result", "ok": True, "result": _jsonable(result)}, plugin
    except (TypeError, ValueError, RecursionError) as exc:
        return {"op": "result", "ok": False, "kind": "invalid_result",
                "message": f"result is not JSON-serialisable: {str(exc)[:500]}"}, plugin


def _serve(cfg: dict[str, Any], aliases: dict[str, str]) -> None:
    warm = cfg.get("mode") == "warm"
    plugin: _Plugin | None = None
    cpu = int(cfg["limits"]["cpu_seconds"])
    first = cfg.pop("first_request", None)  # a small first request rides along with the activation
    while True:
        req: dict[str, Any] | None
        if isinstance(first, dict):
            req, first = first, None
        else:
            req = read_frame(PROTO_FD, int(cfg.get("request_cap", 64 << 20)))
        if req is None:
            return
        if warm:
            _layers.rearm_cpu(cpu)
        reply, plugin = _run_one(plugin, cfg, req)
        for stream in (sys.stdout, sys.stderr):  # output reaches the pipes before the reply
            try:
                stream.flush()
            except Exception:
                pass
        try:
            write_frame(PROTO_FD, reply)
        except (TypeError, ValueError) as exc:
            write_frame(PROTO_FD, {"op": "result", "ok": False, "kind": "invalid_result", "message": str(exc)})
        if not warm or not reply.get("ok"):
            return
