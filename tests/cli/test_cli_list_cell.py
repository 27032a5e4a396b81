"""The INTENTS cell of `karen plugins list` stays readable for plugins with many intents."""

from karen_hooks._cli_plugins import _intent_cell


def test_intent_cell() -> None:
    assert _intent_cell([]) == "-"
    assert _intent_cell(["a", "b", "c"]) == "a,b,c"
    assert _intent_cell(["a", "b", "c", "d", "e"]) == "a,b,c (+2 more)"
