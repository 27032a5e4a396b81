"""assistant-basics: every intent runs offline and deterministically, and every template renders safely."""

from __future__ import annotations

import karen_plugin_assistant_basics as plugin
import pytest

from karen_hooks import Intent
from karen_hooks._prompts import build_variables, package_template_root, render_template

USER = {"user_id": "ann", "roles": ["user"], "tenant_id": "t1"}

SAMPLE_PARAMS = {
    "notes.add": {"text": "buy milk"},
    "notes.list": {},
    "timer.set": {"minutes": 10},
    "reminder.set": {"text": "pay rent"},
    "todo.add": {"task": "laundry"},
    "todo.done": {"task": "laundry"},
    "unit.convert": {"value": 5, "from_unit": "mi", "to_unit": "km"},
    "math.calc": {"expression": "12 * 7"},
    "dictionary.define": {"word": "Ephemeral"},
    "translate.word": {"word": "hello", "language": "fr"},
    "calendar.today": {},
    "joke.tell": {"seed": 1},
    "dice.roll": {"count": 2, "sides": 6, "seed": 3},
    "coin.flip": {"seed": 2},
    "password.generate": {"length": 20, "seed": 5},
    "quote.inspire": {"seed": 0},
    "text.count": {"text": "hello wide world"},
    "assistant.help": {},
}


def _params(intent: Intent, raw: dict) -> object:
    return intent.params.model_validate(raw) if intent.params is not None else raw


def test_intents_are_valid_and_distinct() -> None:
    intents = [Intent.model_validate(i) for i in plugin.karen_intent()]
    assert len(intents) == 18
    assert len({i.name for i in intents}) == 18
    assert all(i.examples and i.description for i in intents)
    assert set(SAMPLE_PARAMS) == {i.name for i in intents}


@pytest.mark.parametrize("raw", plugin.INTENTS, ids=[i["name"] for i in plugin.INTENTS])
def test_each_intent_runs_and_its_template_renders(raw: dict) -> None:
    intent = Intent.model_validate(raw)
    params = _params(intent, SAMPLE_PARAMS[intent.name])
    result = plugin.run(intent.name, params, None)
    assert result == plugin.run(intent.name, params, None)  # deterministic (seeded)
    template = plugin.karen_render_prompt(intent.name)
    assert template is not None
    dumped = params.model_dump(mode="json") if hasattr(params, "model_dump") else params
    out = render_template(
        template,
        build_variables(dumped, USER, result, intent.to_json()),
        template_root=package_template_root(plugin),
    )
    assert out.startswith("You are a concise, friendly assistant helping ann.")


def test_answers() -> None:
    models = {i["name"]: i["params"] for i in plugin.INTENTS}
    assert plugin.run("math.calc", models["math.calc"](expression="sqrt(81) + 2^3"))["result"] == 17
    assert (
        plugin.run("unit.convert", models["unit.convert"](value=100, from_unit="F", to_unit="c"))["result"] == 37.7778
    )
    assert plugin.run("unit.convert", models["unit.convert"](value=3, from_unit="kg", to_unit="lb"))["result"] == 6.6139
    assert plugin.run("translate.word", models["translate.word"](word="cat", language="de"))["translation"] == "Katze"
    assert plugin.run("dictionary.define", models["dictionary.define"](word="nope"))["definition"] is None
    assert plugin.run("text.count", models["text.count"](text="a b  c"))["words"] == 3
    pw = plugin.run("password.generate", models["password.generate"](length=32, symbols=False))["password"]
    assert len(pw) == 32 and pw.isalnum()


@pytest.mark.parametrize("expr", ["__import__('os')", "2 ** 1000000", "open('x')", "a + 1", "(lambda: 1)()", "1 +"])
def test_calculator_refuses_anything_but_arithmetic(expr: str) -> None:
    with pytest.raises(ValueError):
        plugin.calculate(expr)


def test_unit_errors() -> None:
    with pytest.raises(ValueError, match="cannot convert length"):
        plugin.convert(1, "km", "kg")
    with pytest.raises(ValueError, match="unknown unit"):
        plugin.convert(1, "parsec", "km")


def test_notes_use_memory_when_available() -> None:
    class FakeMemory:
        def __init__(self) -> None:
            self.rows: list = []

        def write(self, kind: str, payload: dict) -> None:
            self.rows.append(payload)

        def read(self, kind: str, limit: int = 5) -> list:
            return self.rows[:limit]

    class Ctx:
        memory = FakeMemory()

    models = {i["name"]: i["params"] for i in plugin.INTENTS}
    assert plugin.run("notes.add", models["notes.add"](text="x"), Ctx())["saved"] is True
    assert plugin.run("notes.list", models["notes.list"](), Ctx())["notes"] == [{"text": "x"}]
