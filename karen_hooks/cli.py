"""The ``karen`` command line: list, check, run and write plugins.

Conventions follow llm, datasette and pip: ``karen plugins list``,
``karen install PKG``, ``karen run NAME --param k=v``. Errors are one line
``error: ...`` on stderr and a non-zero exit; ``--debug`` shows the traceback.
See docs/cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator, Sequence

from ._cli_common import CliError, terminal_safe
from ._version import __version__


def _add_call_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``prompt``: which intent, its params, and the caller."""
    p.add_argument("name", help="plugin name, or a bare intent name")
    p.add_argument("--intent", help="intent to run when the plugin has several")
    p.add_argument(
        "--param", "-p", action="append", default=[], metavar="K=V",
        help="a param; V is parsed as JSON when it parses (n=3 -> 3, b=true -> true), else taken as a string",
    )
    p.add_argument("--params-json", metavar="JSON", help="all params as a JSON object ('-' reads stdin); --param overrides keys")
    p.add_argument("--user", default=None, help="caller's user id (default: $USER or 'cli')")
    p.add_argument("--role", action="append", default=None, help="caller's role, repeatable (default: user)")
    p.add_argument("--tenant", default=None, help="caller's tenant id (default: the host's default tenant)")


def build_parser() -> argparse.ArgumentParser:
    from . import _cli_plugins, _cli_run

    parser = argparse.ArgumentParser(prog="karen", description="karen-hooks: a plugin host for AI assistants.")
    parser.add_argument("--version", action="version", version=f"karen-hooks {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--config", metavar="FILE", help="operator config file (default: $KAREN_CONFIG)")
    parser.add_argument("--plugin-dir", metavar="DIR", help="directory plugins folder (default: $KARI_PLUGIN_DIR)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # -- karen plugins ... --------------------------------------------------
    plugins = sub.add_parser("plugins", help="list, inspect, check, create and migrate plugins")
    psub = plugins.add_subparsers(dest="plugins_command", metavar="SUBCOMMAND")
    psub.required = True

    p = psub.add_parser("list", help="list loaded plugins")
    p.add_argument("--json", action="store_true", help="output JSON")
    p.add_argument("--all", action="store_true", help="include plugins that failed to load, with the reason")
    p.add_argument("--hook", metavar="NAME", help="only plugins known to implement this hook")
    p.add_argument("--requirements", action="store_true", help="output installed plugin distributions as requirements.txt")
    p.set_defaults(func=_cli_plugins.cmd_list)

    p = psub.add_parser("info", help="everything about one plugin")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="output JSON")
    p.set_defaults(func=_cli_plugins.cmd_info)

    p = psub.add_parser("check", help="load and validate every plugin; exit 1 if any fails")
    p.add_argument("--json", action="store_true", help="output JSON")
    p.set_defaults(func=_cli_plugins.cmd_check)

    p = psub.add_parser("new", help="write a new plugin distribution (pyproject, module, template, README, tests, tox.ini)")
    p.add_argument("name", help="plugin name, e.g. 'weather' (distribution karen-plugin-weather)")
    p.add_argument("--category", default="examples", help="examples, core, ai, integrations or automation")
    p.add_argument("--dir", dest="out_dir", default=".", metavar="PATH", help="parent folder to write into (default: .)")
    p.add_argument("--description", default=None, help="one-sentence description of the plugin")
    p.add_argument("--force", action="store_true", help="overwrite an existing folder's files")
    p.set_defaults(func=_cli_plugins.cmd_new)

    p = psub.add_parser("migrate", help="turn an old directory plugin into a packaged plugin distribution")
    p.add_argument("path", help="folder holding plugin_manifest.json and handler.py")
    p.add_argument("--dir", dest="out_dir", default=".", metavar="OUT", help="parent folder to write into (default: .)")
    p.add_argument("--force", action="store_true", help="overwrite an existing folder's files")
    p.set_defaults(func=_cli_plugins.cmd_migrate)

    # -- karen install / uninstall -------------------------------------------
    p = sub.add_parser("install", help="pip install packages into karen's own environment")
    p.add_argument("packages", nargs="+", metavar="PKG")
    p.add_argument("-U", "--upgrade", action="store_true")
    p.add_argument("-e", "--editable", action="store_true", help="install PKG (a local path) in editable mode")
    p.add_argument("--no-cache-dir", action="store_true")
    p.add_argument("--pre", action="store_true", help="include pre-releases")
    p.set_defaults(func=_cli_run.cmd_install)

    p = sub.add_parser("uninstall", help="pip uninstall packages from karen's own environment")
    p.add_argument("packages", nargs="+", metavar="PKG")
    p.add_argument("-y", "--yes", action="store_true", help="don't ask for confirmation")
    p.set_defaults(func=_cli_run.cmd_uninstall)

    # -- karen run / prompt ---------------------------------------------------
    p = sub.add_parser("run", help="run a plugin's intent as a caller")
    _add_call_options(p)
    p.add_argument("--json", action="store_true", help="print {result, stdout, stderr, plugin, intent, warnings} as JSON")
    p.set_defaults(func=_cli_run.cmd_run)

    p = sub.add_parser("prompt", help="render a plugin's prompt template")
    _add_call_options(p)
    p.add_argument("--result-json", metavar="JSON", help="the 'result' variable for the template, as JSON")
    p.add_argument("--run", action="store_true", help="run the plugin first and render with its result")
    p.set_defaults(func=_cli_run.cmd_prompt)

    # -- karen sandbox doctor -------------------------------------------------
    sandbox = sub.add_parser("sandbox", help="the process sandbox")
    ssub = sandbox.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND")
    ssub.required = True
    p = ssub.add_parser("doctor", help="which isolation layers work on this machine")
    p.add_argument("--json", action="store_true", help="output JSON")
    p.set_defaults(func=_cli_run.cmd_doctor)

    # -- karen metrics serve (docs/operations.md) -------------------------------
    from .observability import cmd_metrics_serve

    metrics = sub.add_parser("metrics", help="Prometheus metrics")
    msub = metrics.add_subparsers(dest="metrics_command", metavar="SUBCOMMAND")
    msub.required = True
    p = msub.add_parser("serve", help="serve /metrics over HTTP (aggregates workers with PROMETHEUS_MULTIPROC_DIR)")
    p.add_argument("--port", type=int, default=9464, help="port (default 9464; 0 picks a free one)")
    p.add_argument("--addr", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.set_defaults(func=cmd_metrics_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    with _quiet_host_logs(args.debug):
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - every error becomes one line unless --debug
            if args.debug:
                traceback.print_exc()
            print(f"error: {terminal_safe(_one_line(exc))}", file=sys.stderr)
            if not args.debug and not isinstance(exc, CliError) and not _is_karen_error(exc):
                print("(run with --debug for the traceback)", file=sys.stderr)
            return exc.exit_code if isinstance(exc, CliError) else 1


@contextlib.contextmanager
def _quiet_host_logs(debug: bool) -> Iterator[None]:
    """Load problems are reported by the commands themselves; the host's log lines show only with --debug.

    The logger's previous state is restored, so calling ``main()`` in-process leaves logging as it was.
    """
    logger = logging.getLogger("karen_hooks")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.ERROR)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def _is_karen_error(exc: BaseException) -> bool:
    from ._errors import KarenError

    return isinstance(exc, KarenError)


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, CliError) and not _is_karen_error(exc):
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
