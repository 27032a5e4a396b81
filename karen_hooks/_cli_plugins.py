"""``karen plugins list|info|check|new|migrate``."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import hookspecs
from ._cli_common import CliError, open_router, print_json, print_table, terminal_safe
from ._loader import find_entry_points
from ._models import LoadProblem, PluginInfo
from ._rbac import required_roles
from ._router import PluginRouter

ALL_HOOKS = hookspecs.PER_PLUGIN_HOOKS + hookspecs.HOST_EXTENSION_HOOKS


def _intent_cell(names: list[str], shown: int = 3) -> str:
    """A table cell for a plugin's intents: the first few, then how many more (``--json`` has them all)."""
    if not names:
        return "-"
    more = len(names) - shown
    return ",".join(names[:shown]) + (f" (+{more} more)" if more > 0 else "")


def known_hooks(router: PluginRouter, info: PluginInfo) -> list[str] | None:
    """Hooks the plugin implements, when that can be known without running untrusted code in the host.

    ``None`` for sandboxed packaged plugins: their code is only ever imported in the sandbox.
    """
    if info.spec.kind == "directory":  # the manifest stands in for karen_intent
        return ["karen_run"] + (["karen_render_prompt"] if info.prompt else [])
    caller = router._hook_caller(info.name)
    if caller is not None:
        return [h for h in ALL_HOOKS if getattr(caller.hook, h).get_hookimpls()]
    hooks = info.extra.get("hooks")
    if isinstance(hooks, list):
        return [str(h) for h in hooks]
    return None


def sandbox_mode(router: PluginRouter, info: PluginInfo) -> str:
    return router.settings.plugin(info.name).mode if info.sandboxed else "in_host"  # the metrics and audit label, spelled alike


def plugin_record(router: PluginRouter, info: PluginInfo) -> dict[str, Any]:
    """Everything ``plugins list --json`` says about a loaded plugin."""
    intents = []
    roles: set[str] = set()
    for it in info.intents:
        d = it.to_json()
        d["required_roles"] = required_roles(info.name, it, router.settings)
        roles.update(d["required_roles"])
        intents.append(d)
    return {
        "name": info.name,
        "version": info.version,
        "distribution": info.distribution,
        "kind": info.spec.kind,
        "category": info.category,
        "intents": intents,
        "trusted": info.trusted,
        "sandbox": sandbox_mode(router, info),
        "required_roles": sorted(roles),
        "hooks": known_hooks(router, info),
        "error": None,
    }


def problem_record(p: LoadProblem) -> dict[str, Any]:
    dist_version = None
    if p.distribution:
        try:
            dist_version = version(p.distribution)
        except PackageNotFoundError:
            pass
    return {
        "name": p.plugin,
        "version": dist_version,
        "distribution": p.distribution,
        "kind": None,
        "category": None,
        "intents": [],
        "trusted": None,
        "sandbox": None,
        "required_roles": [],
        "hooks": None,
        "error": p.reason,
    }


def _requirements() -> list[str]:
    """``dist==version`` of every installed distribution providing a ``karen.plugins`` entry point."""
    reqs = {f"{c.distribution}=={c.version}" for c in find_entry_points(None, []) if c.distribution}
    return sorted(reqs, key=str.lower)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def cmd_list(args: argparse.Namespace) -> int:
    if args.requirements:
        for line in _requirements():
            print(line)
        return 0
    with open_router(args) as router:
        records = [plugin_record(router, i) for i in router.list_plugins()]
        problems = list(router.problems)
    if args.hook:
        if args.hook not in ALL_HOOKS:
            raise CliError(f"unknown hook {args.hook!r}; hooks are: {', '.join(ALL_HOOKS)}")
        unknown = [r["name"] for r in records if r["hooks"] is None]
        records = [r for r in records if r["hooks"] is not None and args.hook in r["hooks"]]
        if unknown and not args.json:
            print(
                f"note: not inspected (sandboxed, their code never runs in the host): {', '.join(unknown)}",
                file=sys.stderr,
            )
    if args.all:
        records += [problem_record(p) for p in problems]
    if args.json:
        print_json(records)
        return 0
    headers = ["NAME", "VERSION", "DISTRIBUTION", "INTENTS", "TRUSTED", "SANDBOX", "ROLES"]
    if args.all:
        headers.append("ERROR")
    rows = []
    for r in records:
        row = [
            r["name"],
            r["version"] or "-",
            r["distribution"] or (f"(directory: {r['category']})" if r["kind"] == "directory" else "-"),
            _intent_cell([i["name"] for i in r["intents"]]),
            "-" if r["trusted"] is None else ("yes" if r["trusted"] else "no"),
            r["sandbox"] or "-",
            ",".join(r["required_roles"]) or ("-" if r["error"] else "(any)"),
        ]
        if args.all:
            row.append(r["error"] or "")
        rows.append(row)
    if rows:
        print_table(headers, rows)
    else:
        print("no plugins loaded", file=sys.stderr)
    if problems and not args.all:
        print(f"note: {len(problems)} plugin(s) failed to load; see 'karen plugins check'", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with open_router(args) as router:
        info = router.get_plugin(args.name)
        record = plugin_record(router, info)
    record["target"] = info.spec.target
    record["path"] = info.spec.path
    record["code_paths"] = list(info.spec.code_paths)
    record["ui_trusted"] = info.ui_trusted
    record["manifest"] = info.manifest
    if args.json:
        print_json(record)
        return 0
    def say(line: str) -> None:  # plugin-supplied text: one line per field, control characters escaped
        print(terminal_safe(line))

    for key in ("name", "version", "distribution", "kind", "category", "target", "path", "trusted", "sandbox", "ui_trusted"):
        value = record[key]
        if value is not None:
            say(f"{key}: {'yes' if value is True else 'no' if value is False else value}")
    hooks = record["hooks"]
    say(f"hooks: {', '.join(hooks) if hooks is not None else '(not inspected: runs only in the sandbox)'}")
    print("intents:")
    for it in record["intents"]:
        say(f"  {it['name']}: {_one_line(it['description']) or '(no description)'}")
        say(f"    required roles: {', '.join(it['required_roles']) or '(any)'}")
        if it["examples"]:
            say(f"    examples: {'; '.join(_one_line(e) for e in it['examples'])}")
        props = (it["params"] or {}).get("properties") or {}
        if isinstance(props, dict) and props:
            required = (it["params"] or {}).get("required") or []
            required = {r for r in required if isinstance(r, str)} if isinstance(required, list) else set()
            for pname, schema in props.items():
                schema = schema if isinstance(schema, dict) else {}  # (true/false are schemas too)
                kind = schema.get("type") or ("enum" if "enum" in schema else "any")
                default = f" = {schema['default']!r}" if "default" in schema else ""
                flag = " (required)" if pname in required else ""
                say(f"    --param {pname}=<{kind}>{default}{flag}  {_one_line(schema.get('description', ''))}".rstrip())
    return 0


def _extra_checks(router: PluginRouter) -> list[LoadProblem]:
    """Checks beyond loading: params schemas are valid JSON Schema, directory prompts parse."""
    import jinja2
    import jsonschema

    found = []
    for info in router.list_plugins():
        for it in info.intents:
            if isinstance(it.params, dict):
                try:
                    jsonschema.validators.validator_for(it.params).check_schema(it.params)
                except jsonschema.SchemaError as exc:
                    found.append(LoadProblem(info.name, f"intent {it.name!r}: params schema is invalid: {exc.message}", info.distribution))
                except RecursionError:
                    found.append(LoadProblem(info.name, f"intent {it.name!r}: params schema nests too deeply to check",
                                             info.distribution))
                except Exception as exc:  # noqa: BLE001 - one plugin's unreadable schema must not end the check
                    found.append(LoadProblem(info.name, f"intent {it.name!r}: params schema cannot be used: "
                                             f"{type(exc).__name__}: {exc}", info.distribution))
        if info.prompt:
            try:
                jinja2.Environment().parse(info.prompt)
            except jinja2.TemplateSyntaxError as exc:
                found.append(LoadProblem(info.name, f"prompt template line {exc.lineno}: {exc.message}", info.distribution))
            except RecursionError:
                found.append(LoadProblem(info.name, "prompt template nests too deeply to parse", info.distribution))
    return found


def _settings_checks(router: PluginRouter) -> list[LoadProblem]:
    """Settings that name a plugin that is not installed: a typo there fails silently otherwise
    (a misspelt ``disable_plugins`` entry leaves the plugin enabled)."""
    import difflib

    s = router.settings
    known = router.installed_names()
    found = []
    for setting, names in (("disable_plugins", s.disable_plugins), ("trusted_plugins", s.trusted_plugins),
                           ("load_plugins", s.load_plugins or []), ("plugins", sorted(s.plugins))):
        for name in names:
            if name not in known:
                near = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"did you mean {near[0]!r}?" if near else "check the spelling, or install it"
                where = f"[plugins.{name}]" if setting == "plugins" else setting
                found.append(LoadProblem(name, f"{where} names {name!r}, but no plugin of that name is installed; {hint}"))
    return found


def cmd_check(args: argparse.Namespace) -> int:
    with open_router(args, strict=False) as router:
        problems = list(router.problems) + _extra_checks(router) + _settings_checks(router)
        loaded = router.list_plugins()
    if args.json:
        print_json(
            {
                "ok": not problems,
                "loaded": [p.name for p in loaded],
                "problems": [{"plugin": p.plugin, "distribution": p.distribution, "reason": p.reason} for p in problems],
            }
        )
        return 1 if problems else 0
    if not problems:
        print(f"ok: {len(loaded)} plugin(s) loaded, no problems")
        return 0
    print_table(["PLUGIN", "DISTRIBUTION", "REASON"], [[p.plugin, p.distribution or "-", p.reason] for p in problems])
    print(f"error: {len(problems)} problem(s); {len(loaded)} plugin(s) loaded fine", file=sys.stderr)
    return 1


def cmd_new(args: argparse.Namespace) -> int:
    from ._scaffold import write_plugin

    out = write_plugin(args.name, args.out_dir, category=args.category, description=args.description, force=args.force)
    print(f"wrote {out}")
    print(f"next: cd {out} && pip install -e . && pytest")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from ._migrate import migrate

    out, notes = migrate(args.path, args.out_dir, force=args.force)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}")
    print(f"next: cd {out} && pip install -e . && pytest")
    return 0
