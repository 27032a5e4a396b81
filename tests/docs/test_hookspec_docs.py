"""docs/hookspecs.md is generated from karen_hooks/hookspecs.py and must not drift."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from karen_hooks import _docgen, hookspecs

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "hookspecs.md"


def _hookspec_functions() -> dict[str, object]:
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and _docgen.spec_opts(fn, hookspecs.PROJECT_NAME) is not None
    }


def test_generated_page_is_up_to_date() -> None:
    assert PAGE.is_file(), "docs/hookspecs.md is missing; run `python -m karen_hooks._docgen`"
    assert PAGE.read_text(encoding="utf-8") == _docgen.render(), (
        "docs/hookspecs.md is stale: a hookspec changed without regenerating the reference. "
        "Run `python -m karen_hooks._docgen` and commit docs/hookspecs.md"
    )


@pytest.mark.parametrize("name", sorted(_hookspec_functions()))
def test_every_hookspec_has_a_docstring(name: str) -> None:
    fn = _hookspec_functions()[name]
    assert inspect.cleandoc(getattr(fn, "__doc__", None) or "").strip(), (
        f"hookspec {name} has no docstring; it is the plugin author's documentation"
    )


def test_every_hookspec_is_on_the_page_with_its_signature_and_flags() -> None:
    page = _docgen.render()
    docs = {d.name: d for d in _docgen.collect()}
    assert set(docs) == set(_hookspec_functions())
    for name, doc in docs.items():
        assert f"## `{name}`" in page
        assert doc.signature.startswith(f"def {name}(") and doc.signature in page
        assert doc.firstresult == bool(getattr(hookspecs, name).karen_spec["firstresult"])
        assert inspect.cleandoc(getattr(hookspecs, name).__doc__) in page


def test_every_hookspec_is_classified() -> None:
    """The page says whether a hook is per plugin or a host extension; each hook must be one of them."""
    per_plugin = set(hookspecs.PER_PLUGIN_HOOKS)
    host = set(hookspecs.HOST_EXTENSION_HOOKS)
    assert not per_plugin & host
    assert per_plugin | host == set(_hookspec_functions())


def test_signature_keeps_source_annotations() -> None:
    assert _docgen.format_signature(hookspecs.karen_run) == "def karen_run(intent: str, params: Any, ctx: Any) -> Any"


def test_check_flags_a_stale_page(tmp_path: Path) -> None:
    out = tmp_path / "hookspecs.md"
    assert _docgen.main(["--check", "--output", str(out)]) == 1  # missing
    assert _docgen.main(["--output", str(out)]) == 0
    assert _docgen.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text(encoding="utf-8") + "hand edit\n", encoding="utf-8")
    assert _docgen.main(["--check", "--output", str(out)]) == 1


def test_module_entry_point_check_mode(tmp_path: Path) -> None:
    # Run outside the checkout so the subprocess imports the same karen_hooks as this test.
    proc = subprocess.run(
        [sys.executable, "-m", "karen_hooks._docgen", "--check", "--output", str(PAGE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
