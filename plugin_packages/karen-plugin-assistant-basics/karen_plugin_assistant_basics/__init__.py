"""karen-plugin-assistant-basics: everyday assistant intents, offline and deterministic.

Eighteen intents with examples (they double as the routing test corpus of
karen-hooks), pydantic params (they become the LLM tool schemas), and one
prompt template per intent shipped as package data in ``templates/``.
"""

from __future__ import annotations

import ast
import importlib.resources
import operator
import random
import secrets
import string
from typing import Any, Literal

from pydantic import BaseModel, Field

from karen_hooks import hookimpl

from .data import DEFINITIONS, JOKES, QUOTES, TRANSLATIONS, UNITS


class NoteParams(BaseModel):
    text: str = Field(min_length=1, max_length=2000, description="the note to save")


class NotesListParams(BaseModel):
    limit: int = Field(10, ge=1, le=100, description="how many notes to return")


class TimerParams(BaseModel):
    minutes: float = Field(gt=0, le=24 * 60, description="length of the timer in minutes")
    label: str = Field("timer", max_length=100)


class ReminderParams(BaseModel):
    text: str = Field(min_length=1, max_length=500, description="what to be reminded of")
    when: str = Field("tomorrow", max_length=100, description="when, in words (e.g. 'tomorrow 9am')")


class TodoParams(BaseModel):
    task: str = Field(min_length=1, max_length=500, description="the task")


class ConvertParams(BaseModel):
    value: float = Field(description="the number to convert")
    from_unit: str = Field(description="unit of value, e.g. mi, km, lb, kg, f, c")
    to_unit: str = Field(description="target unit")


class CalcParams(BaseModel):
    expression: str = Field(min_length=1, max_length=200, description="arithmetic like '12 * 7' or 'sqrt(81)'")


class WordParams(BaseModel):
    word: str = Field(min_length=1, max_length=60, description="a single English word")


class TranslateParams(WordParams):
    language: Literal["es", "fr", "de"] = Field("es", description="target language: es, fr or de")


class DiceParams(BaseModel):
    count: int = Field(1, ge=1, le=20, description="how many dice")
    sides: int = Field(6, ge=2, le=100, description="sides per die")
    seed: int | None = Field(None, description="fix the outcome (tests, replays)")


class SeedParams(BaseModel):
    seed: int | None = Field(None, description="fix the outcome (tests, replays)")


class PasswordParams(SeedParams):
    length: int = Field(16, ge=8, le=128, description="number of characters")
    symbols: bool = Field(True, description="include punctuation")


class TextParams(BaseModel):
    text: str = Field(min_length=1, max_length=20000, description="the text to count")


def _intent(name: str, description: str, examples: list[str], params: Any = None) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "examples": examples,
        "required_roles": ["user"],
        "params": params,
    }


INTENTS: list[dict[str, Any]] = [
    _intent("notes.add", "Save a short personal note", [
        "take a note", "note that the meeting moved to friday", "write down buy milk", "add a note saying call mom",
    ], NoteParams),
    _intent("notes.list", "Show the personal notes saved earlier", [
        "show my notes", "list all notes", "what notes have i saved", "read my notes back",
    ], NotesListParams),
    _intent("timer.set", "Start a countdown timer for a number of minutes", [
        "set a timer for 10 minutes", "start a 5 minute countdown", "timer for half an hour",
    ], TimerParams),
    _intent("reminder.set", "Remind the user about something at a later time", [
        "remind me to water the plants tomorrow", "set a reminder for the dentist appointment",
        "don't let me forget to pay rent",
    ], ReminderParams),
    _intent("todo.add", "Add a task to the to-do list", [
        "add buy groceries to my todo list", "put laundry on my to-do list", "new task fix the bike",
    ], TodoParams),
    _intent("todo.done", "Mark a to-do task as completed", [
        "mark the laundry task as done", "i finished the groceries task", "tick off fix the bike",
        "complete the todo item",
    ], TodoParams),
    _intent("unit.convert", "Convert a quantity between units of length, weight or temperature", [
        "convert 5 miles to kilometers", "how many pounds is 3 kilograms", "what is 100 fahrenheit in celsius",
    ], ConvertParams),
    _intent("math.calc", "Calculate the result of an arithmetic expression", [
        "what is 12 times 7", "calculate 15 plus 27", "compute the square root of 81", "solve 144 divided by 12",
    ], CalcParams),
    _intent("dictionary.define", "Give the definition of an English word", [
        "define serendipity", "what does ephemeral mean", "meaning of the word ubiquitous",
        "look up the definition of cogent",
    ], WordParams),
    _intent("translate.word", "Translate a single word into Spanish, French or German", [
        "translate hello to spanish", "how do you say thank you in french", "what is cat in german",
    ], TranslateParams),
    _intent("calendar.today", "List today's calendar events and meetings", [
        "what's on my calendar today", "any meetings today", "show today's schedule", "my agenda for today",
    ]),
    _intent("joke.tell", "Tell a short joke", [
        "tell me a joke", "make me laugh", "say something funny", "know any good jokes",
    ], SeedParams),
    _intent("dice.roll", "Roll one or more dice", [
        "roll a die", "roll two six-sided dice", "throw a d20",
    ], DiceParams),
    _intent("coin.flip", "Flip a coin: heads or tails", [
        "flip a coin", "heads or tails", "toss a coin for me",
    ], SeedParams),
    _intent("password.generate", "Generate a strong random password", [
        "generate a strong password", "make me a random password with 20 characters", "create a secure passphrase",
    ], PasswordParams),
    _intent("quote.inspire", "Share an inspirational quote", [
        "give me an inspirational quote", "motivate me with a quote", "quote of the day",
    ], SeedParams),
    _intent("text.count", "Count the words and characters in a text", [
        "how many words are in this sentence", "count the characters in hello world", "word count of my essay",
    ], TextParams),
    _intent("assistant.help", "Explain what the assistant can do", [
        "what can you help me with", "help", "list your abilities", "which commands do you support",
    ]),
]  # fmt: skip


@hookimpl
def karen_intent() -> list[dict[str, Any]]:
    return INTENTS


_OPS: dict[type, Any] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos,
}  # fmt: skip


def calculate(expression: str) -> float | int:
    """Evaluate ``+ - * / // % **`` (small exponents), parentheses and ``sqrt()``; nothing else."""
    expr = expression.replace("^", "**").replace("×", "*").replace("÷", "/")

    def ev(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            base, exp = ev(node.left), ev(node.right)
            if abs(exp) > 100:
                raise ValueError("exponent too large (limit 100)")
            return base**exp
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "sqrt"
            and len(node.args) == 1
        ):
            value = ev(node.args[0])
            if value < 0:
                raise ValueError("square root of a negative number")
            root = value**0.5
            return int(root) if float(root).is_integer() else root
        raise ValueError(f"unsupported expression {expression!r}: use numbers, + - * / // % ** and sqrt()")

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {expression!r} as arithmetic") from None
    return ev(tree)


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """Convert between the units in ``data.UNITS`` (length, mass) and c/f/k temperatures."""
    f, t = from_unit.strip().lower(), to_unit.strip().lower()
    temps = {"c": "c", "celsius": "c", "f": "f", "fahrenheit": "f", "k": "k", "kelvin": "k"}
    if f in temps and t in temps:
        c = {"c": value, "f": (value - 32) * 5 / 9, "k": value - 273.15}[temps[f]]
        return round({"c": c, "f": c * 9 / 5 + 32, "k": c + 273.15}[temps[t]], 4)
    if f not in UNITS or t not in UNITS:
        raise ValueError(f"unknown unit: {f if f not in UNITS else t!r}; known: {sorted(UNITS)} and c/f/k")
    (kind_f, factor_f), (kind_t, factor_t) = UNITS[f], UNITS[t]
    if kind_f != kind_t:
        raise ValueError(f"cannot convert {kind_f} ({f}) to {kind_t} ({t})")
    return round(value * factor_f / factor_t, 4)


def _rng(seed: int | None) -> random.Random:
    return random.Random(seed) if seed is not None else random.Random(secrets.randbits(64))


def _memory_write(ctx: Any, kind: str, payload: dict[str, Any]) -> bool:
    memory = getattr(ctx, "memory", None)
    if memory is None:
        return False
    try:
        memory.write(kind, payload)
        return True
    except Exception:  # noqa: BLE001 - a missing memory never fails the intent
        return False


def _memory_read(ctx: Any, kind: str, limit: int) -> list[Any]:
    memory = getattr(ctx, "memory", None)
    if memory is None:
        return []
    try:
        return list(memory.read(kind, limit=limit) or [])
    except Exception:  # noqa: BLE001
        return []


def run(intent: str, params: Any, ctx: Any = None) -> dict[str, Any]:
    """The work for each intent (pure apart from the optional memory handle)."""
    if intent == "notes.add":
        return {"note": params.text, "saved": _memory_write(ctx, "note", {"text": params.text})}
    if intent == "notes.list":
        return {"notes": _memory_read(ctx, "note", params.limit)}
    if intent == "timer.set":
        return {"label": params.label, "seconds": int(params.minutes * 60)}
    if intent == "reminder.set":
        saved = _memory_write(ctx, "reminder", {"text": params.text, "when": params.when})
        return {"reminder": params.text, "when": params.when, "saved": saved}
    if intent == "todo.add":
        return {"task": params.task, "status": "open", "saved": _memory_write(ctx, "todo", {"task": params.task})}
    if intent == "todo.done":
        return {"task": params.task, "status": "done"}
    if intent == "unit.convert":
        out = convert(params.value, params.from_unit, params.to_unit)
        return {"value": params.value, "from": params.from_unit, "to": params.to_unit, "result": out}
    if intent == "math.calc":
        return {"expression": params.expression, "result": calculate(params.expression)}
    if intent == "dictionary.define":
        word = params.word.lower()
        return {"word": word, "definition": DEFINITIONS.get(word)}
    if intent == "translate.word":
        word = params.word.lower()
        return {
            "word": word,
            "language": params.language,
            "translation": TRANSLATIONS.get(word, {}).get(params.language),
        }
    if intent == "calendar.today":
        return {"events": [e for e in _memory_read(ctx, "calendar", 20)]}
    if intent == "joke.tell":
        return {"joke": _rng(params.seed).choice(JOKES)}
    if intent == "dice.roll":
        rng = _rng(params.seed)
        rolls = [rng.randint(1, params.sides) for _ in range(params.count)]
        return {"rolls": rolls, "total": sum(rolls), "sides": params.sides}
    if intent == "coin.flip":
        return {"side": _rng(params.seed).choice(["heads", "tails"])}
    if intent == "password.generate":
        alphabet = string.ascii_letters + string.digits + ("!#$%&*+-=?@^_" if params.symbols else "")
        if params.seed is None:
            pw = "".join(secrets.choice(alphabet) for _ in range(params.length))
        else:
            rng = random.Random(params.seed)
            pw = "".join(rng.choice(alphabet) for _ in range(params.length))
        return {"password": pw, "length": params.length}
    if intent == "quote.inspire":
        text, author = _rng(params.seed).choice(QUOTES)
        return {"quote": text, "author": author}
    if intent == "text.count":
        return {"words": len(params.text.split()), "characters": len(params.text)}
    if intent == "assistant.help":
        return {"intents": [{"name": i["name"], "description": i["description"]} for i in INTENTS]}
    raise ValueError(f"assistant-basics has no intent {intent!r}")


@hookimpl
def karen_run(intent: str, params: Any, ctx: Any) -> dict[str, Any]:
    return run(intent, params, ctx)


def template_for(intent: str) -> str | None:
    """The prompt template shipped as ``templates/<intent>.j2`` (package data), or ``None``."""
    res = importlib.resources.files(__name__) / "templates" / f"{intent}.j2"
    return res.read_text(encoding="utf-8") if res.is_file() else None


@hookimpl
def karen_render_prompt(intent: str) -> str | None:
    return template_for(intent)


__all__ = ["INTENTS", "calculate", "convert", "karen_intent", "karen_render_prompt", "karen_run", "run", "template_for"]
