"""Directory plugins: the format of the system we replace.

A folder holding ``plugin_manifest.json`` and ``handler.py`` (exposing
``run(params)``, sync or async), optionally ``prompt.txt``, inside category
subfolders of ``KARI_PLUGIN_DIR``. Only the manifest (data) is read in the
host; ``handler.py`` runs in the sandbox unless the operator trusts the plugin
*and* its manifest says ``"sandbox": false``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, field_validator

from ._models import Intent, LoadProblem, PluginSpec
from ._text import escape_controls

MANIFEST = "plugin_manifest.json"
_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

#: A manifest is a small JSON object; a larger file is refused before the host reads it all.
MAX_MANIFEST_BYTES = 1 << 20
CATEGORIES = ("examples", "core", "ai", "integrations", "automation")
SUPPORTED_API_VERSIONS = ("0.1", "0.2", "1.0")


class Manifest(BaseModel):
    """``plugin_manifest.json``. Field names and required fields follow the old system."""

    model_config = ConfigDict(extra="forbid")

    plugin_api_version: StrictStr
    intent: StrictStr | list[StrictStr]
    enable_external_workflow: StrictBool
    required_roles: list[StrictStr]
    trusted_ui: StrictBool
    # optional in the old system
    module: StrictStr = "handler.py"
    sandbox: StrictBool = True
    prompt: StrictStr | None = None
    # additions: all optional, so old manifests stay valid
    name: StrictStr | None = None
    version: StrictStr | None = None
    description: StrictStr = ""
    author: StrictStr | None = None
    examples: list[StrictStr] = Field(default_factory=list)
    params: dict[str, Any] | None = None
    category: Literal["examples", "core", "ai", "integrations", "automation"] | None = None

    @field_validator("plugin_api_version")
    @classmethod
    def _api(cls, v: str) -> str:
        if v not in SUPPORTED_API_VERSIONS:
            raise ValueError(f"{v!r} is not supported; use one of {', '.join(SUPPORTED_API_VERSIONS)}")
        return v

    @field_validator("intent")
    @classmethod
    def _intent(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("must name at least one intent")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        # the name keys trust and settings and is written to logs, the audit log and metric labels
        if v is not None and not _PLUGIN_NAME.match(v):
            raise ValueError("must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter "
                             "or digit")
        return v

    @field_validator("module")
    @classmethod
    def _module(cls, v: str) -> str:
        if "/" in v or "\\" in v or v.startswith(".") or not v.endswith(".py"):
            raise ValueError("must be a .py file name inside the plugin folder, e.g. 'handler.py'")
        return v

    def intent_names(self) -> list[str]:
        return [self.intent] if isinstance(self.intent, str) else list(self.intent)


class DirectoryPlugin(BaseModel):
    """A validated directory plugin, ready for the router."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    path: Path
    category: str | None
    manifest: Manifest
    prompt: str | None
    intents: list[Intent]

    def spec(self) -> PluginSpec:
        return PluginSpec(
            name=self.name,
            kind="directory",
            target=self.manifest.module,
            version=self.manifest.version,
            path=str(self.path),
            code_paths=(str(self.path),),
        )


def iter_plugin_folders(root: Path) -> Iterator[tuple[Path, str | None]]:
    """Yield ``(folder, category)`` for every folder under ``root`` holding a manifest.

    Looks one level down (uncategorised) and two levels down (``category/plugin``).
    """
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith((".", "_")):
            continue
        if (child / MANIFEST).is_file():
            yield child, None
            continue
        for grandchild in sorted(child.iterdir()):
            if grandchild.is_dir() and (grandchild / MANIFEST).is_file():
                yield grandchild, child.name


def _read_bounded(path: Path, max_bytes: int, chars: int | None = None) -> str | None:
    """The file's UTF-8 text, or ``None`` if it is over ``max_bytes`` (or ``chars`` characters).

    The host reads these files for plugins it will not trust with anything else: a
    symlink (``prompt.txt -> /etc/shadow`` or ``/proc/self/environ``) or anything but a
    regular file is refused (OSError), never followed.
    """
    if path.is_symlink():
        raise OSError(f"{path.name} is a symbolic link; the host reads only regular files of a plugin's folder")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        return None
    text = data.decode("utf-8")
    return None if chars is not None and len(text) > chars else text


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(manifest)"
        parts.append(f"field {field!r}: {e['msg']}")
    return "; ".join(parts)


def load_directory_plugin(folder: Path, category: str | None) -> DirectoryPlugin | LoadProblem:
    """Read and validate one folder's manifest. Never imports ``handler.py``."""
    guess = folder.name
    # The folder's files are the plugin author's, read by the host: bounded, and every way
    # they can fail to parse is this plugin's problem, never the host's.
    try:
        text = _read_bounded(folder / MANIFEST, MAX_MANIFEST_BYTES)
        if text is None:
            return LoadProblem(guess, f"{folder / MANIFEST} is larger than 1 MiB; a manifest is a small JSON "
                                      "object: move data out of it")
        raw = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return LoadProblem(guess, f"{folder / MANIFEST}: not readable JSON ({exc}); fix the file's syntax")
    except RecursionError:
        return LoadProblem(guess, f"{folder / MANIFEST}: not readable JSON (it nests too deeply); fix the file")
    name: str = guess
    if isinstance(raw, dict) and isinstance(raw.get("name"), str) and _PLUGIN_NAME.match(raw["name"]):
        name = raw["name"]
    elif escape_controls(guess) != guess and not (isinstance(raw, dict) and "name" in raw):
        # a folder's name is the plugin's name unless the manifest gives one; it goes into logs
        return LoadProblem(guess.encode("unicode_escape").decode(), f"{folder!r}: a folder name with control "
                           "characters cannot be a plugin name; rename the folder or set \"name\" in the manifest")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        return LoadProblem(
            name,
            f"{folder / MANIFEST} is invalid: {_format_errors(exc)}. Required fields: plugin_api_version, "
            "intent, enable_external_workflow, required_roles, trusted_ui",
        )
    if not (folder / manifest.module).is_file():
        return LoadProblem(name, f"{folder}: module {manifest.module!r} named by the manifest does not exist")
    prompt = manifest.prompt
    if prompt is not None or (folder / "prompt.txt").is_file():
        # a template longer than the renderer accepts could never render: refused here, by name
        from ._template_sandbox import MAX_TEMPLATE_CHARS  # (jinja2 only where a folder has a prompt)
    if prompt is not None and len(prompt) > MAX_TEMPLATE_CHARS:
        return LoadProblem(name, f"{folder / MANIFEST}: field 'prompt' is longer than {MAX_TEMPLATE_CHARS} "
                                 "characters, the most a prompt template may have; shorten it")
    if prompt is None and (folder / "prompt.txt").is_file():
        try:
            prompt = _read_bounded(folder / "prompt.txt", MAX_TEMPLATE_CHARS * 4, chars=MAX_TEMPLATE_CHARS)
        except (OSError, UnicodeDecodeError) as exc:
            return LoadProblem(name, f"{folder / 'prompt.txt'}: not readable as UTF-8 text ({exc}); save it as UTF-8")
        if prompt is None:
            return LoadProblem(name, f"{folder / 'prompt.txt'} is longer than {MAX_TEMPLATE_CHARS} characters, "
                                     "the most a prompt template may have; shorten it")
    try:
        intents = [
            Intent(
                name=i,
                description=manifest.description,
                examples=manifest.examples,
                required_roles=manifest.required_roles,
                params=manifest.params,
            )
            for i in manifest.intent_names()
        ]
    except ValidationError as exc:
        return LoadProblem(name, f"{folder / MANIFEST} is invalid: {_format_errors(exc)}")
    return DirectoryPlugin(
        name=name,
        path=folder.resolve(),
        category=manifest.category or category,
        manifest=manifest,
        prompt=prompt,
        intents=intents,
    )
