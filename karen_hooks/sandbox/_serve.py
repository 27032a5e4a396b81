"""Runs inside a sandbox child once its layers are applied: load the plugin, serve calls.

Requests and replies are JSON frames on descriptor 3; ``ctx.memory`` is an RPC
over the same channel.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import os
import sys
import traceback
from typing import Any

from . import _layers
from ._protocol import read_frame, write_frame

PROTO_FD = 3
_MEMORY_METHODS = ("write", "read", "delete", "list")


def _rewrite(path: str, aliases: dict[str, str]) -> str:
    for real, alias in sorted(aliases.items(), key=lambda kv: -len(kv[0])):
        if path == real or path.startswith(real + "/"):
            return alias + path[len(real):]
    return path


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
