"""router.match and router.tool_schemas over the example plugins' real intents."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from karen_hooks import Settings, hookimpl
from karen_hooks._matching import DEFAULT_THRESHOLD, BM25Matcher, find_matcher, tool_names
from karen_hooks._router import PluginRouter

ROOT = Path(__file__).resolve().parents[2] / "plugin_packages"
USER = {"user_id": "u1", "roles": ["user"], "tenant_id": "t1"}
ADMIN = {"user_id": "a1", "roles": ["admin"], "tenant_id": "t1"}


def _example_modules() -> dict[str, ModuleType]:
    """The example plugin packages, imported from the checkout (installed or not)."""
    mods = {}
    for name, folder, module in (
        ("assistant-basics", "karen-plugin-assistant-basics", "karen_plugin_assistant_basics"),
        ("time-query", "karen-plugin-time-query", "karen_plugin_time_query"),
        ("weather", "karen-plugin-weather", "karen_plugin_weather"),
    ):
        path = str(ROOT / folder)
        if path not in sys.path:
            sys.path.insert(0, path)
        mods[name] = __import__(module)
    return mods


class AdminTools:
    """An in-process plugin with an admin-only intent that shares words with user intents."""

    @hookimpl
    def karen_intent(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "admin.purge-notes",
                "description": "Delete every user's notes",
                "examples": ["purge all notes", "wipe every note"],
                "required_roles": ["admin"],
                "params": {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]},
            }
        ]


@pytest.fixture(scope="module")
def router() -> PluginRouter:
    r = PluginRouter(Settings(load_plugins=[]))
    for name, mod in _example_modules().items():
        r.register_plugin(mod, name)
    r.register_plugin(AdminTools(), "admin-tools")
    return r


def _examples(router: PluginRouter) -> list[tuple[str, str]]:
    return [
        (it.name, ex)
        for info in router.list_plugins()
        if info.name != "admin-tools"
        for it in info.intents
        for ex in it.examples
    ]


def test_at_least_twenty_intents(router: PluginRouter) -> None:
    user_intents = [n for n in router.list_intents() if not n.startswith("admin.")]
    assert len(user_intents) >= 20
    assert len(_examples(router)) >= 60


def test_every_example_routes_to_its_own_intent_at_rank_1(router: PluginRouter) -> None:
    misses = []
    for intent, example in _examples(router):
        ranked = router.match(example, USER, limit=5)
        if not ranked or ranked[0].intent != intent:
            misses.append((example, intent, [(m.intent, m.score) for m in ranked[:2]]))
        else:
            assert ranked[0].score == 1.0  # an utterance equal to an example scores 1.0 (docs/routing.md)
            assert ranked[0].plugin == router.plugin_for_intent(intent).name
    assert not misses, misses


def test_scores_are_ranked_normalised_and_limited(router: PluginRouter) -> None:
    ranked = router.match("roll three dice and flip a coin", USER, limit=2, threshold=0.0)
    assert {m.intent for m in ranked} == {"coin.flip", "dice.roll"}
    assert len(ranked) == 2
    assert all(0.0 < m.score <= 1.0 for m in ranked)
    assert ranked[0].score >= ranked[1].score
    assert ranked[0].to_json()["plugin"] == "assistant-basics"


def test_off_topic_utterances_return_nothing(router: PluginRouter) -> None:
    for text in ("open the pod bay doors", "banana", "", "   ", "the and of"):
        assert router.match(text, USER) == []


def test_threshold_drops_weak_candidates(router: PluginRouter) -> None:
    everything = router.match("convert 10 km to miles", USER, limit=10, threshold=0.0)
    default = router.match("convert 10 km to miles", USER, limit=10)
    assert default[0].intent == "unit.convert"
    assert len(default) < len(everything)
    assert all(m.score >= DEFAULT_THRESHOLD for m in default)


def test_only_allowed_intents_are_returned(router: PluginRouter) -> None:
    assert "admin.purge-notes" not in [m.intent for m in router.match("purge all notes", USER, limit=20)]
    assert router.match("purge all notes", ADMIN)[0].intent == "admin.purge-notes"  # admin inherits user
    nobody = {"user_id": "x", "roles": []}
    assert router.match("what time is it", nobody) == []  # every example intent needs "user"


def test_operator_role_override_applies(router: PluginRouter) -> None:
    r = PluginRouter(Settings(load_plugins=[], plugins={"time-query": {"required_roles": ["ops"]}}))
    r.register_plugin(_example_modules()["time-query"], "time-query")
    assert r.match("what time is it", USER) == []
    assert r.match("what time is it", {"user_id": "o", "roles": ["ops"]})[0].intent == "time.now"


def test_tool_schemas_are_function_calling_shaped(router: PluginRouter) -> None:
    tools = router.tool_schemas(USER)
    names = {t["function"]["name"] for t in tools}
    assert len(tools) == len(names) == len(router.list_intents()) - 1  # no admin intent
    for tool in tools:
        assert set(tool) == {"type", "function"} and tool["type"] == "function"
        fn = tool["function"]
        assert set(fn) == {"name", "description", "parameters"}
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", fn["name"])
        assert fn["description"]
        assert fn["parameters"]["type"] == "object" and "properties" in fn["parameters"]
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    convert = by_name["unit_convert"]["parameters"]
    assert set(convert["required"]) == {"value", "from_unit", "to_unit"}
    assert convert["properties"]["value"]["type"] == "number"
    assert by_name["time_now"]["parameters"]["properties"]["format"]["enum"] == ["iso", "unix", "human"]
    assert by_name["calendar_today"]["parameters"] == {"type": "object", "properties": {}}
    admin_tools = {t["function"]["name"] for t in router.tool_schemas(ADMIN)}
    assert "admin_purge-notes" in admin_tools


def test_tool_names_are_one_to_one() -> None:
    names = tool_names(["a.b", "a_b", "x" * 100, "ok-name"])
    assert names["ok-name"] == "ok-name"
    assert names["a.b"] != names["a_b"]
    assert len(set(names.values())) == 4
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v) for v in names.values())
    assert tool_names(["a.b", "a_b"])["a.b"] == tool_names(["a_b", "a.b"])["a.b"]


class KeywordMatcher:
    """A stand-in for an embedding matcher: exact intent-name mention wins."""

    threshold = 0.5

    def match(self, text: str, intents: Any, limit: int) -> list[tuple[str, float]]:
        return [(i.name, 1.0) for i in intents if i.name in text][:limit]


class MatcherPlugin:
    @hookimpl
    def karen_intent(self) -> list[dict[str, Any]]:
        return [{"name": "matcher.noop", "description": "nothing"}]

    @hookimpl
    def karen_intent_matcher(self) -> Any:
        return KeywordMatcher()


def test_matcher_is_pluggable_by_a_trusted_plugin() -> None:
    r = PluginRouter(Settings(load_plugins=[]))
    r.register_plugin(_example_modules()["assistant-basics"], "assistant-basics")
    assert isinstance(find_matcher(r), BM25Matcher)
    r.register_plugin(MatcherPlugin(), "matcher")
    assert [m.intent for m in r.match("please run dice.roll", USER)] == ["dice.roll"]
    assert r.match("roll a die", USER) == []  # the plugged matcher decides


def test_bm25_cache_follows_intent_changes() -> None:
    from karen_hooks import Intent

    m = BM25Matcher()
    a = [Intent(name="x.a", examples=["alpha beta"]), Intent(name="x.b", examples=["gamma"])]
    assert m.match("gamma", a, 5)[0][0] == "x.b"
    b = [Intent(name="x.a", examples=["gamma delta"]), Intent(name="x.b", examples=["alpha"])]
    assert m.match("gamma delta", b, 5)[0][0] == "x.a"


def test_a_megabyte_of_text_is_matched_on_its_start(router: PluginRouter) -> None:
    """Matching did work per intent per distinct word, on text of any length: 1 MB took 3.4 s of the event loop."""
    import random
    import string
    import time

    from karen_hooks._matching import MAX_QUERY_CHARS

    rng = random.Random(7)
    noise = " ".join("".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(150_000))
    head = "what time is it"
    t = time.perf_counter()
    ranked = router.match(head + " " + noise, USER)
    assert time.perf_counter() - t < 0.5
    assert len(head) < MAX_QUERY_CHARS and ranked == router.match(head + " " + noise[: MAX_QUERY_CHARS], USER)
