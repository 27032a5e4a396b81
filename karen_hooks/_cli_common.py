"""Helpers shared by the ``karen`` subcommands: errors, tables, progress, building a host."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._config import load_settings
from ._dirplugins import iter_plugin_folders
from ._loader import find_entry_points
from ._router import PluginRouter
from ._text import escape_controls


def terminal_safe(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``), for printing what a plugin wrote.

    A plugin's output, error messages and names reach the operator's terminal; escape
    sequences in them must show as text, not act. Newlines and tabs stay.
    """
    return escape_controls(text, keep="\n\t")


class CliError(Exception):
    """A user-facing failure: printed as one ``error:`` line, exit ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def progress_enabled() -> bool:
    """Progress lines only on a terminal (never in pipes, CI logs or tests)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(message: str) -> None:
    if progress_enabled():
        print(message, file=sys.stderr, flush=True)


class _ProgressRouter(PluginRouter):
    """A router that says which plugin it is loading, one line each, on a terminal."""

    _total = 0
    _done = 0

    def discover(self) -> None:
        s = self.settings
        self._total = len(find_entry_points(s.load_plugins, s.disable_plugins))
        if s.plugin_dir:
            self._total += sum(1 for _ in iter_plugin_folders(Path(s.plugin_dir)))
        self._done = 0
        super().discover()

    def _guard(self, name: str, dist: str | None, load: Any) -> None:
        self._done += 1
        progress(f"[{self._done}/{self._total}] loading {name}" + (f" ({dist})" if dist else ""))
        super()._guard(name, dist, load)


def make_router(args: Any, **overrides: Any) -> PluginRouter:
    """The host's router as configured by ``--config``/``--plugin-dir`` and the environment."""
    if getattr(args, "plugin_dir", None):
        overrides["plugin_dir"] = args.plugin_dir
    settings = load_settings(getattr(args, "config", None), **overrides)
    return _ProgressRouter(settings) if progress_enabled() else PluginRouter(settings)


@contextlib.contextmanager
def open_router(args: Any, **overrides: Any) -> Iterator[PluginRouter]:
    """:func:`make_router`, closing its sandbox workers afterwards."""
    router = make_router(args, **overrides)
    try:
        yield router
    finally:
        router.close()


def parse_params(pairs: Sequence[str], params_json: str | None) -> dict[str, Any]:
    """``--params-json`` then each ``--param k=v`` (JSON scalars parsed, else strings)."""
    params: dict[str, Any] = {}
    if params_json is not None:
        raw = sys.stdin.read() if params_json == "-" else params_json
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CliError(f"--params-json is not valid JSON: {exc}") from None
        except RecursionError:
            raise CliError("--params-json nests too deeply") from None
        if not isinstance(loaded, dict):
            raise CliError(f"--params-json must be a JSON object, got {type(loaded).__name__}")
        params.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--param {pair!r} must look like key=value")
        params[key.strip()] = parse_value(value)
    return params


def parse_value(value: str) -> Any:
    """``3`` -> 3, ``true`` -> True, ``null`` -> None, ``[1,2]`` -> list; anything else stays a string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
    except RecursionError:
        raise CliError(f"{value[:40]}... nests too deeply") from None


def user_context(user: str | None, roles: list[str] | None, tenant: str | None) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "user_id": user or os.environ.get("USER") or "cli",
        "roles": roles if roles is not None else ["user"],
    }
    if tenant is not None:
        ctx["tenant_id"] = tenant
    return ctx


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], file: Any = None) -> None:
    """A plain aligned text table; cells are stringified and kept on one line."""
    out = file or sys.stdout
    cells = [[terminal_safe(" ".join(("" if c is None else str(c)).split())) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
