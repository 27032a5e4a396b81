"""``karen run``, ``karen prompt``, ``karen install/uninstall`` and ``karen sandbox doctor``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._cli_common import (
    CliError,
    make_router,
    parse_params,
    parse_value,
    print_json,
    progress,
    terminal_safe,
    user_context,
)
from ._errors import PluginError, TemplateError
from ._manager import PluginManager

T = TypeVar("T")


def _call(args: argparse.Namespace, work: Callable[[PluginManager, dict[str, Any], dict[str, Any]], Coroutine[Any, Any, T]]) -> T:
    """Build the host and the caller from the options, run ``work``, and close the sandbox workers.

    A plugin that failed has its own stderr (and, with --debug, its traceback) shown before the error line.
    """
    params = parse_params(args.param, args.params_json)
    user = user_context(args.user, args.role, args.tenant)
    manager = PluginManager(router=make_router(args))
    try:
        return asyncio.run(work(manager, params, user))
    except PluginError as exc:
        if exc.stderr:
            sys.stderr.write(terminal_safe(exc.stderr if exc.stderr.endswith("\n") else exc.stderr + "\n"))
        if args.debug and exc.plugin_traceback:
            sys.stderr.write(terminal_safe(exc.plugin_traceback))
        raise
    finally:
        manager.router.close()


def cmd_run(args: argparse.Namespace) -> int:
    out = _call(args, lambda manager, params, user: manager.run_plugin(args.name, params, user, intent=args.intent))
    if args.json:
        print_json(
            {
                "plugin": out.plugin,
                "intent": out.intent,
                "result": out.result,
                "stdout": out.stdout,
                "stderr": out.stderr,
                "warnings": list(out.warnings),
            }
        )
        return 0
    # The plugin's own output goes to stderr so stdout stays the result alone.
    for label, text in (("stdout", out.stdout), ("stderr", out.stderr)):
        if text:
            sys.stderr.write(terminal_safe(f"--- plugin {label} ---\n{text}" + ("" if text.endswith("\n") else "\n")))
    for w in out.warnings:
        print(terminal_safe(f"warning: {w}"), file=sys.stderr)
    result = out.result  # (JSON escapes control characters itself)
    print(terminal_safe(result) if isinstance(result, str) else json.dumps(result, indent=2, default=str))
    return 0


async def _render(manager: PluginManager, args: argparse.Namespace, params: dict[str, Any], user: dict[str, Any]) -> str:
    result: Any = None
    if args.run:
        result = (await manager.run_plugin(args.name, params, user, intent=args.intent)).result
    elif args.result_json is not None:
        result = parse_value(args.result_json)
    return await manager.render_prompt(args.name, params, user, result=result, intent=args.intent)


def cmd_prompt(args: argparse.Namespace) -> int:
    try:
        rendered = _call(args, lambda manager, params, user: _render(manager, args, params, user))
    except TemplateError as exc:
        if args.run or args.result_json is not None:
            raise
        raise CliError(f"{exc} (templates usually use the plugin's result: pass --run or --result-json)") from exc
    print(terminal_safe(rendered))
    return 0


def _pip(args: list[str], what: str) -> int:
    cmd = [sys.executable, "-m", "pip", *args]
    progress(f"{what} (running {' '.join(cmd[2:])})")
    try:
        proc = subprocess.run(cmd, check=False)
    except OSError as exc:
        raise CliError(f"could not run pip with {sys.executable}: {exc}") from None
    if proc.returncode != 0:
        raise CliError(f"pip exited with status {proc.returncode}; see its output above", proc.returncode)
    return 0


def _packages(packages: list[str]) -> list[str]:
    """Package names or paths only: one starting with '-' would reach pip as an option (--index-url=...)."""
    for pkg in packages:
        if pkg.startswith("-"):
            raise CliError(f"{pkg!r} is not a package name or path; pip options cannot be passed through karen "
                           "(run 'python -m pip' for those)")
    return packages


def cmd_install(args: argparse.Namespace) -> int:
    _packages(args.packages)
    flags = ["install"]
    if args.upgrade:
        flags.append("--upgrade")
    if args.no_cache_dir:
        flags.append("--no-cache-dir")
    if args.pre:
        flags.append("--pre")
    for pkg in args.packages:
        flags += ["-e", pkg] if args.editable else [pkg]
    _pip(flags, f"installing {', '.join(args.packages)} into {sys.prefix}")
    progress("done; 'karen plugins list' shows the plugins now installed")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    flags = ["uninstall", *(["-y"] if args.yes else []), *_packages(args.packages)]
    return _pip(flags, f"uninstalling {', '.join(args.packages)} from {sys.prefix}")


def _jsonable(item: Any) -> Any:
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    if hasattr(item, "model_dump"):
        return item.model_dump(mode="json")
    return item


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        from .sandbox import doctor, format_doctor
    except ImportError as exc:
        raise CliError(f"the process sandbox is not available in this karen-hooks installation ({exc})") from None
    statuses = doctor()
    missing = [s.name for s in statuses if not getattr(s, "active", True)]
    if args.json:
        print_json({"layers": [_jsonable(s) for s in statuses], "missing": missing})
    else:
        print(format_doctor(statuses))
    return 1 if missing else 0
