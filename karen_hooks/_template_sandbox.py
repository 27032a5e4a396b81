"""The Jinja2 environment prompts render in: Jinja2's sandbox, tightened, with hard caps.

Used by :func:`karen_hooks._prompts.render_template`, in the host for trusted
plugins and *inside the process sandbox* for untrusted ones, so this module
imports only jinja2, the standard library and ``karen_hooks._errors``.

What the environment does on top of :class:`jinja2.sandbox.ImmutableSandboxedEnvironment`
(see docs/prompts.md for the author-facing version):

- ``StrictUndefined``: a missing variable is an error naming it.
- Any access to an attribute or item starting with ``_`` is rejected when the
  template is parsed, and again at run time (``TemplateSecurityError``).
- ``str.format`` / ``str.format_map`` are refused outright (not merely
  sandboxed); only an allowlist of ``str`` methods can be called.
- Only an allowlist of filters exists (no ``random``, ``urlize``...); the
  ones that can grow their input (``center``, ``indent``, ``replace``,
  ``join``, ``format``, ``batch``, ``slice``, ``wordwrap``, ``tojson``) check
  the size of their result *before* building it.
- ``*``, ``**``, ``+`` and ``%`` are intercepted and refuse results larger than
  the cap; ``~`` (concatenation) is checked too.
- Globals are only ``range`` (at most :data:`MAX_RANGE` items) and ``dict``;
  ``lipsum``, ``cycler``, ``joiner`` and ``namespace`` do not exist.
- Every ``{% for %}`` iteration counts against :data:`MAX_ITERATIONS` per
  render, every emitted piece of text against an emission budget, and the
  render stops after :data:`MAX_SECONDS`.
- Expressions nested deeper than :data:`MAX_DEPTH` and templates larger than
  :data:`MAX_TEMPLATE_CHARS` are refused.
- ``{% include %}`` / ``{% import %}`` / ``{% extends %}`` only reach files
  below the plugin's own ``template_root`` (no absolute paths, no ``..``, no
  symlink escaping); with no root there is nothing to include at all.
"""

from __future__ import annotations

import functools
import os
import re
import time
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, nodes
from jinja2 import filters as jfilters
from jinja2.exceptions import SecurityError, TemplateNotFound
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_context, pass_eval_context
from jinja2.visitor import NodeTransformer

#: Default cap on the rendered prompt, in characters.
MAX_OUTPUT = 200_000
#: Most items a ``range()`` may produce.
MAX_RANGE = 10_000
#: Total ``{% for %}`` iterations allowed in one render (all loops together).
MAX_ITERATIONS = 50_000
#: Wall-clock seconds one render may take.
MAX_SECONDS = 2.0
#: Largest template source accepted, in characters.
MAX_TEMPLATE_CHARS = 100_000
#: Deepest nesting of template syntax (expressions, blocks) accepted.
MAX_DEPTH = 60
#: Largest integer a template may compute, in bits (``**`` and ``*``).
MAX_INT_BITS = 4096
#: Text emitted anywhere (including into macros and ``{% set %}`` blocks) may
#: be at most this many times ``max_output``.
EMIT_FACTOR = 4

_BUILTIN_GLOBALS = ("range", "dict")
_REMOVED_GLOBALS = ("lipsum", "cycler", "joiner", "namespace")

#: ``str`` methods a template may call. Everything else (``format``,
#: ``format_map``, ``translate``, ``expandtabs``, ``encode``...) is refused.
STR_METHODS = frozenset(
    {
        "capitalize", "casefold", "center", "count", "endswith", "find", "index", "isalnum",
        "isalpha", "isdecimal", "isdigit", "islower", "isnumeric", "isspace", "istitle",
        "isupper", "join", "ljust", "lower", "lstrip", "partition", "removeprefix",
        "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit",
        "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper",
        "zfill",
    }
)  # fmt: skip

#: Filters available to templates (the rest of Jinja's set is removed).
SAFE_FILTERS = frozenset(
    {
        "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape",
        "filesizeformat", "first", "float", "forceescape", "groupby", "int", "items", "last",
        "length", "list", "lower", "map", "max", "min", "pprint", "reject", "rejectattr",
        "reverse", "round", "safe", "select", "selectattr", "sort", "string", "striptags",
        "title", "trim", "truncate", "unique", "upper", "urlencode", "wordcount", "xmlattr",
    }
)  # fmt: skip

_NUMBER_ATTRS = frozenset({"real", "imag", "numerator", "denominator", "is_integer", "bit_length", "conjugate"})
_HOST_NAMES = ("_karen_iter", "_karen_concat")
_PCT_SPEC = re.compile(r"%(?:\([^)]*\))?([#0\- +]*)(\*|\d+)?(?:\.(\*|\d+))?")


class _LimitError(SecurityError):
    """A render limit was hit (size, time, iterations)."""


def _weight(value: Any, cap: int) -> int:
    """Roughly how many characters ``str(value)`` would produce; stops counting past ``cap``.

    Walks containers (shared references count every time they appear), so a
    list holding the same large string 10 000 times weighs what its text would.
    """
    total = 0
    stack = [value]
    while stack and total <= cap:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, Mapping):
            total += 2
            for k, item in v.items():
                stack.append(k)
                stack.append(item)
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += 2 + len(v)
            stack.extend(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            total += v.bit_length() // 3 + 1
        else:
            total += 8
    return total


class _DenyLoader(BaseLoader):
    """Used when a plugin has no template directory: nothing can be included."""

    def get_source(self, environment: Any, template: str) -> tuple[str, str | None, Callable[[], bool]]:
        raise SecurityError(f"cannot include {template!r}: this plugin has no template directory")


class PluginTemplateLoader(BaseLoader):
    """Loads templates from one plugin's own directory and nowhere else.

    Names are relative paths with ``/`` separators. Absolute paths, ``..``,
    backslashes, NUL bytes and symlinks resolving outside the root are refused
    with a security error; a missing file is a :class:`TemplateNotFound`.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.realpath(os.fspath(root))

    def resolve(self, template: str) -> str:
        if (
            not template
            or template.startswith(("/", "~"))
            or "\\" in template
            or "\x00" in template
            or re.match(r"^[A-Za-z]:", template)
        ):
            raise SecurityError(f"cannot include {template!r}: only relative names of the plugin's own templates")
        parts = template.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise SecurityError(f"cannot include {template!r}: '..', '.' and empty path segments are not allowed")
        path = os.path.realpath(os.path.join(self.root, *parts))
        if os.path.commonpath([self.root, path]) != self.root:
            raise SecurityError(f"cannot include {template!r}: it resolves outside the plugin's template directory")
        return path

    def get_source(self, environment: Any, template: str) -> tuple[str, str | None, Callable[[], bool]]:
        path = self.resolve(template)
        if not os.path.isfile(path):
            raise TemplateNotFound(template)
        with open(path, encoding="utf-8") as fh:
            source = fh.read(MAX_TEMPLATE_CHARS + 1)
        return source, path, lambda: True


class KarenSandbox(ImmutableSandboxedEnvironment):
    """The sandboxed environment prompts render in. One instance per render (it holds the budgets)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, template_root: str | os.PathLike[str] | None = None, max_output: int = MAX_OUTPUT) -> None:
        loader: BaseLoader = PluginTemplateLoader(template_root) if template_root else _DenyLoader()
        super().__init__(
            loader=loader,
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            auto_reload=False,
            cache_size=0,
            finalize=self._finalize,
        )
        self.max_output = max_output
        self.iterations = 0
        self.emitted = 0
        self.deadline = time.monotonic() + MAX_SECONDS
        self.globals.clear()
        self.globals.update(
            # dict is a function that builds one, not the type: dict.update(params, ...) on the type
            # mutated the caller's data past the immutable sandbox (which checks instances only)
            {"range": self._range, "dict": self._dict, "_karen_iter": self._iter, "_karen_concat": self._concat}
        )
        self.filters = {k: v for k, v in self.filters.items() if k in SAFE_FILTERS}
        self.filters.update(self._capped_filters())

    # -- budgets ------------------------------------------------------------
    def _tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _LimitError(f"template took longer than {MAX_SECONDS:g} s")

    def _check_size(self, size: int, what: str) -> None:
        if size > self.max_output:
            raise _LimitError(f"{what} would be {size} characters or more, above the {self.max_output} cap")

    def _check_weight(self, value: Any, what: str) -> None:
        self._check_size(_weight(value, self.max_output), what)

    def _range(self, *args: int) -> range:
        rng = range(*args)
        if len(rng) > MAX_RANGE:
            raise _LimitError(f"range() of {len(rng)} items is above the {MAX_RANGE} item cap")
        return rng

    def _dict(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        made = dict(*args, **kwargs)
        self._check_weight(made, "a dict()")
        return made

    def _iter(self, iterable: Any) -> Iterator[Any]:
        for item in iterable:
            self.iterations += 1
            if self.iterations > MAX_ITERATIONS:
                raise _LimitError(f"more than {MAX_ITERATIONS} loop iterations in one render")
            self._tick()
            yield item

    def _concat(self, *parts: Any) -> str:
        total = 0
        for p in parts:
            total += _weight(p, self.max_output)
            self._check_size(total, "a '~' concatenation")
        return "".join(str(p) for p in parts)

    @pass_context
    def _finalize(self, context: Any, value: Any) -> Any:
        self._tick()
        size = _weight(value, self.max_output) if not isinstance(value, str) else len(value)
        self.emitted += size
        self._check_size(size, "an emitted value")
        if self.emitted > self.max_output * EMIT_FACTOR:
            raise _LimitError(f"template emitted more than {self.max_output * EMIT_FACTOR} characters")
        return value

    # -- operators ----------------------------------------------------------
    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._tick()
        if operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if max(abs(left), 2).bit_length() * right > MAX_INT_BITS:
                    raise _LimitError(f"{left} ** {right} is above the {MAX_INT_BITS}-bit integer cap")
        elif operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                self._check_weight(seq, "a repeated sequence")
                self._check_size(_weight(seq, self.max_output) * max(n, 0), "a repeated sequence")
            elif isinstance(left, int) and isinstance(right, int):
                if abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
                    raise _LimitError(f"a product above the {MAX_INT_BITS}-bit integer cap")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                self._check_size(_weight(left, self.max_output) + _weight(right, self.max_output), "a '+' result")
        elif operator == "%" and isinstance(left, str):
            self._check_percent(left, right)
        return super().call_binop(context, operator, left, right)

    def _check_percent(self, fmt: str, args: Any) -> None:
        padding = 0  # every field's width (and precision) together, not each alone: 15,000 fields of
        for m in _PCT_SPEC.finditer(fmt):  # 199,999 each were a 3 GB result
            for n in (m.group(2), m.group(3)):
                if n == "*":
                    raise _LimitError("'*' widths in %-formatting are not allowed")
                if n:
                    padding += int(n)
                    if padding > self.max_output:
                        raise _LimitError(f"%-format widths adding up to {padding} are above the cap")
        self._check_size(len(fmt) + padding + _weight(args, self.max_output), "a %-format result")

    # -- attributes and calls ----------------------------------------------
    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr not in STR_METHODS:
            return False
        # bytes have str's methods without their caps (b.center(3e9)), and int.to_bytes(4e9) builds
        # gigabytes: no bytes at all, and of numbers only what reads a value
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return False
        if isinstance(obj, (int, float, complex)) and attr not in _NUMBER_ATTRS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if obj == self._dict:  # the dict global builds a dict; the type's methods are not offered
            raise SecurityError(f"dict.{attribute} is not allowed in prompt templates; dict(...) builds a new dict")
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if obj == self._dict:
            raise SecurityError(f"dict[{argument!r}] is not allowed in prompt templates; dict(...) builds a new dict")
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is not allowed")

    def wrap_str_format(self, value: Any) -> None:
        if (
            isinstance(value, (types.MethodType, types.BuiltinMethodType))
            and value.__name__ in ("format", "format_map")
            and isinstance(getattr(value, "__self__", None), str)
        ):
            raise SecurityError(f"str.{value.__name__} is not allowed in prompt templates; use ~ or the format filter")
        return None

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self._tick()
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str) and isinstance(obj, types.BuiltinMethodType):
            name = obj.__name__
            if name not in STR_METHODS:
                raise SecurityError(f"str.{name} is not allowed in prompt templates")
            if name == "join":
                items = [str(x) for x in self._bounded_list(args[0] if args else kwargs.get("iterable", ()))]
                self._check_size(sum(map(len, items)) + len(owner) * max(len(items) - 1, 0), "a join result")
                return owner.join(items)
            if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
                self._check_size(args[0], f"str.{name} width")
            if name == "replace" and len(args) >= 2:
                self._check_replace(owner, args[0], args[1])
        return super().call(context, obj, *args, **kwargs)

    def _weighed(self, items: Iterator[Any], what: str) -> Iterator[Any]:
        total = 0
        for item in items:
            total += _weight(item, self.max_output)
            self._check_size(total, what)
            yield item

    def _bounded_list(self, value: Any) -> list[Any]:
        items = []
        for item in value:
            items.append(item)
            self._check_size(len(items), "a sequence")
        self._check_weight(items, "a sequence")
        return items

    def _check_replace(self, s: str, old: Any, new: Any) -> None:
        old, new = str(old), str(new)
        count = len(s) + 1 if old == "" else s.count(old)
        self._check_size(len(s) + count * max(len(new) - len(old), 0), "a replace result")

    def _capped_filters(self) -> dict[str, Callable[..., Any]]:
        env = self

        def guard(f: Callable[..., Any], name: str) -> Callable[..., Any]:
            """Refuse to stringify a value heavier than the cap (shared-reference bombs)."""

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                out = list(args)
                for i, a in enumerate(out):
                    if not hasattr(a, "environment"):  # skip a passed context / eval context
                        if isinstance(a, Iterator):  # a lazy map/select: weigh items as they come
                            out[i] = env._weighed(a, f"the input of |{name}")
                        else:
                            env._check_weight(a, f"the input of |{name}")
                        break
                return f(*out, **kwargs)

            for marker in ("jinja_pass_arg",):
                if hasattr(f, marker):
                    setattr(wrapped, marker, getattr(f, marker))
            return wrapped

        def center(value: Any, width: int = 80) -> str:
            env._check_size(int(width), "|center width")
            return str(value).center(width)

        def indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
            s = str(s)
            w = width if isinstance(width, str) else " " * min(int(width), env.max_output + 1)
            env._check_size(len(s) + (s.count("\n") + 1) * len(w), "an |indent result")
            return jfilters.do_indent(s, width, first, blank)

        def replace(s: Any, old: Any, new: Any, count: int | None = None) -> str:
            s = str(s)
            env._check_replace(s, old, new)
            return s.replace(str(old), str(new), -1 if count is None else count)

        @pass_eval_context
        def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
            items = env._bounded_list(value)
            if attribute is not None:
                getter = jfilters.make_attrgetter(env, attribute)
                items = [getter(x) for x in items]
            strs = [str(x) for x in items]
            env._check_size(sum(map(len, strs)) + len(str(d)) * max(len(strs) - 1, 0), "a |join result")
            return str(d).join(strs)

        def format_(value: Any, *args: Any, **kwargs: Any) -> str:
            env._check_percent(str(value), kwargs or args)
            return jfilters.do_format(str(value), *args, **kwargs)

        def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
            env._check_size(int(linecount), "|batch size")
            return jfilters.do_batch(env._bounded_list(value), linecount, fill_with)

        def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
            env._check_size(int(slices), "|slice count")
            return jfilters.do_slice(env._bounded_list(value), slices, fill_with)

        def wordwrap(s: Any, width: int = 79, break_long_words: bool = True, wrapstring: str | None = None,
                     break_on_hyphens: bool = True) -> str:  # fmt: skip
            s = str(s)
            sep = "\n" if wrapstring is None else str(wrapstring)
            lines = len(s) // max(int(width), 1) + s.count("\n") + 1
            env._check_size(len(s) + lines * len(sep), "a |wordwrap result")
            return jfilters.do_wordwrap(env, s, width, break_long_words, sep, break_on_hyphens)

        @pass_eval_context
        def tojson(eval_ctx: Any, value: Any, indent: int | None = None) -> Any:
            if indent is not None and int(indent) > 8:
                raise _LimitError("|tojson indent above 8")
            return jfilters.do_tojson(eval_ctx, value, indent)

        def sum_(iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
            items = env._bounded_list(iterable)
            if attribute is not None:
                getter = jfilters.make_attrgetter(env, attribute)
                items = [getter(x) for x in items]
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in [*items, start]):
                raise SecurityError("|sum only adds numbers in prompt templates")
            return sum(items, start)

        capped: dict[str, Callable[..., Any]] = {
            "center": center, "indent": indent, "replace": replace, "join": join, "format": format_,
            "batch": batch, "slice": slice_, "wordwrap": wordwrap, "tojson": tojson, "sum": sum_,
        }  # fmt: skip
        out = {name: guard(f, name) for name, f in self.filters.items()}
        out.update({name: guard(f, name) for name, f in capped.items()})
        return out

    # -- parse-time checks ---------------------------------------------------
    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise _LimitError(
                f"template {name or ''!s} is {len(source)} characters, above the {MAX_TEMPLATE_CHARS} cap"
            )
        try:
            tree = super()._parse(source, name, filename)
        except RecursionError:
            raise _LimitError("template nests too deeply") from None
        _check_tree(tree)
        tree = _Instrument().visit(tree)
        tree.set_environment(self)
        return tree


def _check_tree(tree: nodes.Template) -> None:
    """Reject, before anything runs, the names and attributes the sandbox forbids."""
    stack: list[tuple[nodes.Node, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _LimitError(f"template nests deeper than {MAX_DEPTH} levels (line {node.lineno})")
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            raise SecurityError(f"line {node.lineno}: access to {node.attr!r} is not allowed")
        if isinstance(node, nodes.Const) and isinstance(node.value, str) and node.value.startswith("__"):
            # a dunder name as a string: x['__class__'], x|attr('__globals__')
            raise SecurityError(f"line {node.lineno}: the string {node.value[:40]!r} is not allowed")
        if (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
            and node.arg.value.startswith("_")
        ):
            raise SecurityError(f"line {node.lineno}: access to {node.arg.value!r} is not allowed")
        if isinstance(node, nodes.Name):
            if node.name.startswith("_") or node.name in _HOST_NAMES:
                raise SecurityError(f"line {node.lineno}: the name {node.name!r} is not allowed")
            if node.name in _REMOVED_GLOBALS and node.ctx == "load":
                raise SecurityError(f"line {node.lineno}: {node.name!r} is not available in prompt templates")
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())


class _Instrument(NodeTransformer):
    """Count loop iterations, check concatenations, and pass literal text through the emission budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 - jinja's visitor naming
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.Name("_karen_iter", "load"), [node.iter], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return nodes.Call(nodes.Name("_karen_concat", "load"), list(node.nodes), [], None, None, lineno=node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        node.nodes = [
            nodes.Const(n.data, lineno=n.lineno) if isinstance(n, nodes.TemplateData) else n for n in node.nodes
        ]
        return node


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> types.CodeType:
    """Parse, check and compile a template once; the code is the same for every KarenSandbox."""
    return KarenSandbox().compile(source)
