"""UI component schema and the no-HTML rule."""

from __future__ import annotations

from typing import Any

import pytest

from karen_hooks import InvalidResult, Settings
from karen_hooks._ui import MAX_COMPONENT_CHARS, ui_disabled_reason, validate_component

GOOD: list[dict[str, Any]] = [
    {"type": "card", "title": "Weather", "text": "Sunny, 3 < 5 is true", "fields": [{"label": "Temp", "value": 21.5}],
     "actions": [{"label": "Forecast", "intent": "weather.forecast", "params": {"city": "Oslo"}}]},
    {"type": "table", "columns": ["city", "temp"], "rows": [["Oslo", 3], ["Rome", None]]},
    {"type": "list", "title": "Notes", "items": ["milk", "bread"]},
    {"type": "form", "title": "New note", "inputs": [{"name": "text", "label": "Text", "required": True}],
     "actions": [{"label": "Save", "intent": "notes.add"}]},
    {"type": "text", "text": "plain words & numbers: 2 > 1"},
    {"type": "image", "url": "https://example.com/a.png", "alt": "a chart"},
]  # fmt: skip


@pytest.mark.parametrize("component", GOOD, ids=[c["type"] for c in GOOD])
def test_valid_components_pass_and_come_back_as_data(component: dict[str, Any]) -> None:
    out = validate_component(component, "p")
    assert out is not None and out["type"] == component["type"]
    for key, value in component.items():
        assert out[key] == value


BAD: list[tuple[str, Any, str]] = [
    ("unknown-type", {"type": "iframe"}, "type"),
    ("extra-field", {"type": "text", "text": "x", "onclick": "x"}, "onclick"),
    ("script-tag", {"type": "text", "text": "<script>alert(1)</script>"}, "HTML"),
    ("img-onerror", {"type": "card", "title": "<img src=x onerror=alert(1)>"}, "HTML"),
    ("closing-tag", {"type": "list", "items": ["ok", "</div>"]}, "HTML"),
    ("entity", {"type": "text", "text": "&#60;script&#62;"}, "HTML"),
    ("html-in-field-value", {"type": "card", "fields": [{"label": "x", "value": "<b>hi</b>"}]}, "HTML"),
    ("html-in-action-params", {"type": "card", "actions": [{"label": "go", "intent": "a.b", "params": {"q": "<svg onload=x>"}}]}, "HTML"),
    ("javascript-url", {"type": "image", "url": "javascript:alert(1)", "alt": "x"}, "https"),
    ("js-url-in-text", {"type": "text", "text": " JavaScript:alert(1)"}, "script"),
    ("data-url-in-param", {"type": "card", "actions": [{"label": "go", "intent": "a.b", "params": {"u": "data:text/html,x"}}]}, "script"),
    ("http-image", {"type": "image", "url": "http://example.com/a.png", "alt": "x"}, "https"),
    ("image-without-alt", {"type": "image", "url": "https://example.com/a.png"}, "alt"),
    ("ragged-table", {"type": "table", "columns": ["a", "b"], "rows": [["x"]]}, "cells"),
    ("bad-action-intent", {"type": "card", "actions": [{"label": "x", "intent": "../../x"}]}, "intent"),
    ("html-field-without-switch", {"type": "text", "html": "plain"}, "KAREN_ALLOW_UI_HTML"),
    ("not-a-dict", "<p>hi</p>", "component"),
    ("not-json", {"type": "text", "text": object()}, "JSON"),
    ("too-big", {"type": "list", "items": ["x" * 1000] * 100}, "cap"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "needle"), [(d, n) for _, d, n in BAD], ids=[i for i, _, _ in BAD])
def test_invalid_components_are_refused(data: Any, needle: str) -> None:
    with pytest.raises(InvalidResult) as info:
        validate_component(data, "evil-plugin")
    assert "evil-plugin" in str(info.value)
    assert needle.lower() in str(info.value).lower()


def test_allow_html_switch() -> None:
    html = {"type": "text", "text": "<b>bold</b>", "html": "<p>para</p>"}
    assert validate_component(html, "p", allow_html=True) == html
    with pytest.raises(InvalidResult, match="script"):  # script URLs stay refused
        validate_component({"type": "text", "text": "javascript:alert(1)"}, "p", allow_html=True)


def test_none_means_no_component() -> None:
    assert validate_component(None, "p") is None
    assert MAX_COMPONENT_CHARS >= 1000


def test_ui_disabled_reason() -> None:
    assert "ADVANCED_MODE is off" in (ui_disabled_reason(Settings(), "w") or "")
    trusted_but_off = Settings(plugins={"w": {"ui_trusted": True}})
    assert "ADVANCED_MODE" in (ui_disabled_reason(trusted_but_off, "w") or "")
    on = Settings(advanced_mode=True)
    assert "plugin 'w'" in (ui_disabled_reason(on, "w") or "")
    assert ui_disabled_reason(Settings(advanced_mode=True, plugins={"w": {"ui_trusted": True}}), "w") is None
    assert ui_disabled_reason(on, "w", ui_trusted=True) is None


def test_advanced_mode_false_string_keeps_ui_off() -> None:
    from karen_hooks import load_settings

    s = load_settings(environ={"ADVANCED_MODE": "false"})
    assert ui_disabled_reason(s, "w", ui_trusted=True) is not None


def test_a_component_nested_past_the_recursion_limit_is_invalid_result() -> None:
    d: dict = {"type": "text", "text": "x"}
    for _ in range(5000):
        d = {"type": "card", "children": [d]}
    with pytest.raises(InvalidResult, match="nests too deeply"):
        validate_component(d, "p")


@pytest.mark.parametrize(("component", "allow_html"), [
    ({"type": "text", "html": '<a href="javascript:alert(1)">x</a>'}, True),  # never, even with raw HTML allowed
    ({"type": "text", "text": "\x01javascript:alert(1)"}, False),  # browsers strip leading controls
    ({"type": "text", "text": "see [here](javascript:alert(1))"}, False),  # a markdown link
    ({"type": "text", "text": "x", "url": "java\tscript:alert(1)"}, False),  # and tabs inside
    ({"type": "text", "text": "x", "url": "data:text/html,<script>"}, True),
])
def test_script_urls_are_refused_wherever_they_stand(component: dict, allow_html: bool) -> None:
    """Only a string *starting* with a script URL was refused (and 'url' was unchecked outside images)."""
    with pytest.raises(InvalidResult):
        validate_component(component, "p", allow_html=allow_html)


def test_text_that_merely_mentions_data_or_files_is_fine_and_the_tag_check_is_linear() -> None:
    import time

    assert validate_component({"type": "text", "text": "Totals, data: 42; your file: a.pdf"}, "p")
    t = time.perf_counter()  # "<" and 60,000 spaces took 39 s: the tag pattern backtracked quadratically
    validate_component({"type": "card", "actions": [{"label": "x", "intent": "a",
                                                      "params": {"p": "<" + " " * 63_000 + "0"}}]}, "p")
    assert time.perf_counter() - t < 1
