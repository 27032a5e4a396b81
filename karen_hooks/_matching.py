"""Intent routing: rank intents for an utterance (BM25 by default), and LLM tool schemas.

The default :class:`BM25Matcher` is lexical and offline. A trusted plugin can
replace it by implementing the host-extension hook ``karen_intent_matcher``
and returning any object with ``match(text, intents, limit) ->
list[(intent_name, score)]`` (for example an embedding matcher). How scores
are computed and what the threshold means: docs/routing.md.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._models import Intent, PluginInfo

#: Candidates scoring below this are not returned by ``router.match``.
DEFAULT_THRESHOLD = 0.3

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from into onto about as is are was were be been being
    am do does did doing have has had i me my we our you your it its this that these those there here what
    which who whom whose please can could would will shall should may might must just some any so than then
    too very s t also let lets let's up out get give tell show how much""".split()
)


def stem(word: str) -> str:
    """A deliberately small suffix stripper (plurals, -ing, -ed) so "notes"/"note", "setting"/"set" meet."""
    if len(word) <= 3 or word.isdigit():
        return word
    for suffix, repl, min_len in (("ies", "y", 5), ("sses", "ss", 5), ("ing", "", 6), ("ed", "", 5), ("es", "e", 5)):
        if word.endswith(suffix) and len(word) >= min_len:
            word = word[: -len(suffix)] + repl
            break
    else:
        if word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # "setting" -> "sett" -> "set"
    return word


def tokenize(text: str) -> list[str]:
    """Lowercase words and digits, stopwords dropped, lightly stemmed."""
    return [stem(w) for w in _WORD.findall(text.lower().replace("_", " ")) if w not in STOPWORDS]


class IntentMatcher(Protocol):
    """What ``karen_intent_matcher`` must return."""

    def match(self, text: str, intents: Sequence[Intent], limit: int) -> list[tuple[str, float]]: ...


#: How much of a text intent matching reads (an utterance is far shorter).
MAX_QUERY_CHARS = 2000


class BM25Matcher:
    """Okapi BM25 over each intent's examples, name and description.

    Every example is its own short document, and so is ``name + description``;
    an intent's score is the best score among its documents. Scores are
    normalised to ``[0, 1]``: the raw BM25 score divided by the score the
    query itself would get as a document (``sum(idf(t))`` over the distinct
    query terms times BM25's term weight for tf=1 at the query's length),
    capped at 1. An utterance equal to an example scores 1.0; a query term no
    intent uses still counts in the divisor, so off-topic words lower the score.
    ``threshold`` is the default cut-off ``router.match`` applies.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.k1 = k1
        self.b = b
        self.threshold = threshold
        self._key: str | None = None
        self._docs: list[tuple[str, Counter[str], int]] = []
        self._df: Counter[str] = Counter()
        self._avgdl = 1.0

    def _index(self, intents: Sequence[Intent]) -> None:
        key = hashlib.sha256(repr([(i.name, i.description, tuple(i.examples)) for i in intents]).encode()).hexdigest()
        if key == self._key:
            return
        docs: list[tuple[str, Counter[str], int]] = []
        for it in intents:
            texts = [f"{it.name} {it.description}", *it.examples]
            for text in texts:
                toks = tokenize(text)
                if toks:
                    docs.append((it.name, Counter(toks), len(toks)))
        self._docs = docs
        self._df = Counter(t for _, tf, _ in docs for t in tf)
        self._avgdl = (sum(dl for _, _, dl in docs) / len(docs)) if docs else 1.0
        self._key = key

    def idf(self, term: str) -> float:
        n = len(self._docs)
        df = self._df.get(term, 0)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def match(self, text: str, intents: Sequence[Intent], limit: int = 5) -> list[tuple[str, float]]:
        """Rank ``intents`` for ``text``: ``[(intent_name, score)]``, best first, at most ``limit``."""
        self._index(intents)
        # An utterance, not a document: the work grows with intents x distinct words, and a
        # megabyte of text took seconds of the event loop. Its first MAX_QUERY_CHARS decide.
        terms = set(tokenize(text[:MAX_QUERY_CHARS]))
        if not terms or not self._docs:
            return []
        idf = {t: self.idf(t) for t in terms}
        # The score the query itself would get as a document: the best a real document can do.
        ideal = (self.k1 + 1) / (1 + self.k1 * (1 - self.b + self.b * len(terms) / self._avgdl))
        bound = sum(idf.values()) * ideal
        best: dict[str, float] = {}
        for name, tf, dl in self._docs:
            norm = self.k1 * (1 - self.b + self.b * dl / self._avgdl)
            raw = sum(idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t in terms if t in tf)
            if raw > best.get(name, 0.0):
                best[name] = raw
        # Rank on the raw score (so a short exact example beats a longer one that
        # also reaches the cap), report the normalised one.
        ranked = sorted(best.items(), key=lambda p: (-p[1], p[0]))[: max(limit, 0)]
        return [(n, round(min(raw / bound, 1.0), 4)) for n, raw in ranked]


@dataclass(frozen=True)
class IntentMatch:
    """One ranked candidate from ``router.match``."""

    intent: str
    plugin: str
    score: float
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"intent": self.intent, "plugin": self.plugin, "score": self.score, "description": self.description}


_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def tool_names(intent_names: Iterable[str]) -> dict[str, str]:
    """Map each intent name to a function name LLM APIs accept (``^[A-Za-z0-9_-]{1,64}$``).

    Dots become ``_`` (``notes.add`` -> ``notes_add``). When that would
    collide with another intent's name, or is too long, an 8-hex-digit hash of
    the intent name is appended, so the mapping is deterministic and one-to-one.
    """
    names = sorted(set(intent_names))
    plain = {n: re.sub(r"[^A-Za-z0-9_-]", "_", n) for n in names}
    counts = Counter(plain.values())
    out: dict[str, str] = {}
    for n in names:
        t = plain[n]
        if counts[t] > 1 or not _TOOL_NAME.match(t):
            t = f"{t[:55]}_{hashlib.sha256(n.encode()).hexdigest()[:8]}"
        out[n] = t
    return out


def tool_schema(intent: Intent, name: str | None = None) -> dict[str, Any]:
    """One intent as an OpenAI-style tool: ``{"type": "function", "function": {...}}``."""
    params = dict(intent.params_schema())
    params.pop("title", None)
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    description = intent.description or f"Run the {intent.name} intent."
    return {
        "type": "function",
        "function": {
            "name": name or tool_names([intent.name])[intent.name],
            "description": description,
            "parameters": params,
        },
    }


def tool_schemas(intents: Sequence[Intent]) -> list[dict[str, Any]]:
    """Tool definitions for ``intents``, sorted by intent name, with collision-free names."""
    names = tool_names(i.name for i in intents)
    return [tool_schema(i, names[i.name]) for i in sorted(intents, key=lambda i: i.name)]


# -- router integration (PluginRouter.match / tool_schemas delegate here) ---------


def allowed_intents(router: Any, user_ctx: Any) -> list[tuple[PluginInfo, Intent]]:
    """Every (plugin, intent) the caller's roles admit, in plugin then intent order."""
    return [
        (info, it) for info in router.list_plugins() for it in info.intents if router.allowed(info.name, it, user_ctx)
    ]


def find_matcher(router: Any) -> Any:
    """The first trusted plugin's ``karen_intent_matcher`` answer, else a :class:`BM25Matcher`.

    Plugins are asked in name order; the answer is cached on the router until
    the set of trusted plugins changes (``discover()`` again).
    """
    callers = router.trusted_callers()
    key = tuple(callers)
    cached = getattr(router, "_karen_matcher", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    matcher: Any = None
    for name in key:
        hook = getattr(callers[name].hook, "karen_intent_matcher", None)
        answer = hook() if hook is not None else None
        if answer is not None:
            if not callable(getattr(answer, "match", None)):
                raise TypeError(f"plugin {name!r}: karen_intent_matcher returned an object without match()")
            matcher = answer
            break
    matcher = matcher or BM25Matcher()
    router._karen_matcher = (key, matcher)
    return matcher


def match_intents(
    router: Any, text: str, user_ctx: Any, limit: int = 5, threshold: float | None = None
) -> list[IntentMatch]:
    """Ranked intents the caller may use for ``text``; scores below the threshold are dropped."""
    pairs = allowed_intents(router, user_ctx)
    by_name = {it.name: (info, it) for info, it in pairs}
    matcher = find_matcher(router)
    cut = threshold if threshold is not None else getattr(matcher, "threshold", DEFAULT_THRESHOLD)
    out: list[IntentMatch] = []
    for name, score in matcher.match(text, [it for _, it in pairs], limit):
        if name in by_name and score >= cut:
            info, it = by_name[name]
            out.append(IntentMatch(intent=name, plugin=info.name, score=float(score), description=it.description))
    return out[:limit]


def router_tool_schemas(router: Any, user_ctx: Any) -> list[dict[str, Any]]:
    """Tool definitions for every intent the caller may use."""
    return tool_schemas([it for _, it in allowed_intents(router, user_ctx)])
