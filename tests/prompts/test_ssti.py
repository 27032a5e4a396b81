"""Server-side template injection corpus: every payload is refused and nothing happens.

Each payload, if it escaped the sandbox, would create ``MARKER`` (through
``os.system``, ``os.popen``, ``open(..., 'w')``, ``subprocess``...). The test
checks the typed error *and* that the marker file does not exist afterwards.
"""

from __future__ import annotations

import os
import time

import pytest

from karen_hooks import TemplateError, TemplateSecurityError
from karen_hooks._prompts import build_variables, render_template

CMD = "touch MARKER"

# (id, template). MARKER is replaced with a path under tmp_path.
PAYLOADS: list[tuple[str, str]] = [
    # __class__ / __mro__ / __subclasses__ walks
    ("mro-subclasses", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
    (
        "mro-popen",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}{{ c('CMD', shell=True) }}{% endif %}{% endfor %}",
    ),
    ("base-subclasses", "{{ ().__class__.__base__.__subclasses__() }}"),
    ("bases-getitem", "{{ ''['__class__']['__mro__'][1]['__subclasses__']() }}"),
    ("class-on-params", "{{ params.__class__.__init__.__globals__ }}"),
    ("dict-class", "{{ dict.__init__.__globals__['__builtins__']['__import__']('os').system('CMD') }}"),
    ("range-class", "{{ range.__init__.__globals__.os.system('CMD') }}"),
    ("loop-internals", "{% for x in [1] %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}"),
    ("getattr-built-name", "{{ ''|attr('_' ~ '_class__') }}"),
    ("getitem-built-name", "{% set n = '_' ~ '_class__' %}{{ params[n] }}"),
    ("request-style", "{{ user|attr('__class__')|attr('__base__') }}"),
    ("map-attribute", "{{ [params]|map(attribute='__class__')|list }}"),
    # cycler / joiner / namespace / lipsum __globals__
    ("cycler-globals", "{{ cycler.__init__.__globals__.os.popen('CMD').read() }}"),
    ("joiner-globals", "{{ joiner.__init__.__globals__.os.system('CMD') }}"),
    ("namespace-globals", "{{ namespace.__init__.__globals__.os.system('CMD') }}"),
    ("lipsum-globals", "{{ lipsum.__globals__['os'].system('CMD') }}"),
    ("lipsum-call", "{{ lipsum() }}"),
    ("cycler-call", "{{ cycler(1, 2).next() }}"),
    # self._TemplateReference__context
    ("template-reference", "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('CMD') }}"),
    ("template-reference-item", "{{ self['_TemplateReference__context'] }}"),
    # str.format / format_map walks
    ("format-walk", "{{ '{0.__class__.__mro__[1].__subclasses__}'.format('') }}"),
    ("format-map-walk", "{{ '{x.__class__}'.format_map({'x': params}) }}"),
    ("format-globals", "{{ '{0.__init__.__globals__}'.format(range) }}"),
    ("format-item", "{{ ''['format']('{0.__class__}', 1) }}"),
    # |attr('format')
    ("attr-format", "{{ ('{0.__class__}'|attr('format'))(1) }}"),
    ("attr-format-map", "{{ ('{x}'|attr('format_map'))({'x': 1}) }}"),
    # other str escape hatches
    ("translate", "{{ 'x'.translate({120: 'y'}) }}"),
    ("encode", "{{ 'x'.encode() }}"),
    # resource exhaustion
    ("range-huge", "{{ range(10**9)|list }}"),
    ("range-loop", "{% for i in range(10**9) %}{% endfor %}"),
    ("string-mult", "{{ 'x' * 10**9 }}"),
    ("string-mult-reversed", "{{ 10**9 * 'x' }}"),
    ("list-mult", "{{ [0] * 10**9 }}"),
    ("shared-list-mult", "{% set big = 'x' * 100000 %}{{ [big] * 10000 }}"),
    ("pow-huge", "{{ 10 ** (10 ** 10) }}"),
    ("pow-chain", "{{ 9 ** 99999 }}"),
    ("center", "{{ 'x'.center(10**9) }}"),
    ("center-filter", "{{ 'x'|center(1000000000) }}"),
    ("ljust", "{{ 'x'.ljust(999999999) }}"),
    ("percent-width", "{{ '%999999999d' % 1 }}"),
    ("percent-star", "{{ '%*d' % (999999999, 1) }}"),
    ("format-filter-width", "{{ '%0999999999d'|format(1) }}"),
    ("replace-blowup", "{{ ('x' * 100000)|replace('x', 'y' * 100000) }}"),
    ("join-blowup", "{{ range(10000)|join('x' * 100000) }}"),
    ("str-join-blowup", "{{ ('x' * 100000).join(range(10000)|map('string')) }}"),
    ("indent-blowup", "{{ ('\n' * 100000)|indent(100000) }}"),
    ("batch-fill", "{{ [1]|batch(1000000000, 'x')|list }}"),
    ("tojson-indent", "{{ [[[1]]]|tojson(indent=1000000) }}"),
    ("sum-lists", "{% set big = ['x'] * 10000 %}{{ [big, big]|sum(start=[]) }}"),
    (
        "concat-doubling",
        "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}{{ f('x', 40) }}",
    ),
    (
        "nested-loops",
        "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}{% endfor %}{% endfor %}{% endfor %}",
    ),
    ("nested-loops-output", "{% for a in range(10000) %}{% for b in range(10000) %}xxxxxxxxxx{% endfor %}{% endfor %}"),
    (
        "set-block-buffer",
        "{% set x %}{% for i in range(9000) %}{{ 'y' * 100000 }}{% endfor %}{% endset %}{{ x|length }}",
    ),
    (
        "macro-buffer",
        "{% macro m() %}{% for i in range(9000) %}{{ 'y' * 100000 }}{% endfor %}{% endmacro %}{{ m()|length }}",
    ),
    (
        "literal-doubling",
        "{% set a = ['x' * 100000] %}{% set a = [a, a] %}{% set a = [a, a] %}{% set a = [a, a] %}{% set a = [a, a] %}{{ a }}",
    ),
    (
        "upper-shared",
        "{% set a = ['x' * 100000] * 1 %}{% set a = [a, a, a, a] %}{% set a = [a, a, a, a] %}{{ a|upper }}",
    ),
    ("lazy-map-list", "{{ range(10000)|map('center', 100000)|list|length }}"),
    ("lazy-map-join", "{{ range(10000)|map('center', 100000)|join }}"),
    ("fromkeys-shared", "{% set x = dict.fromkeys(range(10000), 'x' * 100000) %}{{ x.values()|list|join }}"),
    # deep nesting and recursion
    ("deep-parens", "{{ " + "(" * 500 + "1" + ")" * 500 + " }}"),
    ("deep-lists", "{{ " + "[" * 300 + "]" * 300 + " }}"),
    ("deep-ifs", "{% if 1 %}" * 200 + "x" + "{% endif %}" * 200),
    ("macro-recursion", "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"),
    # file access through the loader
    ("include-passwd", "{% include '/etc/passwd' %}"),
    ("include-dotdot", "{% include '../../../../etc/passwd' %}"),
    ("import-passwd", "{% import '/etc/passwd' as p %}"),
    ("extends-passwd", "{% extends '/etc/passwd' %}"),
    ("from-import", "{% from '/etc/passwd' import x %}"),
    # private names
    ("underscore-name", "{{ _x }}"),
    ("host-name", "{{ _karen_iter }}"),
]


@pytest.mark.parametrize("payload", [p for _, p in PAYLOADS], ids=[i for i, _ in PAYLOADS])
def test_payload_refused_without_side_effect(payload: str, tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "pwned")
    template = payload.replace("CMD", f"touch {marker}").replace("MARKER", marker)
    variables = build_variables({"x": 1}, {"user_id": "u1", "roles": ["user"]}, None, {"name": "t.x"})
    started = time.monotonic()
    with pytest.raises((TemplateSecurityError, TemplateError)) as info:
        render_template(template, variables)
    assert time.monotonic() - started < 5, "the limit must stop the render quickly"
    assert not os.path.exists(marker)
    # A security refusal, not a crash; the one exception is the final output
    # cap, which is a TemplateError ("output too large") by contract.
    if not isinstance(info.value, TemplateSecurityError):
        assert "output exceeds" in str(info.value), f"{type(info.value).__name__}: {info.value}"


def test_include_from_plugin_root_cannot_escape(tmp_path: object) -> None:
    root = os.path.join(str(tmp_path), "templates")
    os.makedirs(os.path.join(root, "parts"))
    secret = os.path.join(str(tmp_path), "secret.txt")
    with open(secret, "w") as fh:
        fh.write("TOPSECRET")
    with open(os.path.join(root, "parts", "greet.j2"), "w") as fh:
        fh.write("hi {{ user.id }}")
    os.symlink(secret, os.path.join(root, "link.j2"))
    os.symlink(str(tmp_path), os.path.join(root, "up"))
    variables = build_variables({}, {"user_id": "ann"})
    assert render_template("{% include 'parts/greet.j2' %}!", variables, template_root=root) == "hi ann!"
    for name in (
        "/etc/passwd",
        "../secret.txt",
        "parts/../../secret.txt",
        "link.j2",
        "up/secret.txt",
        "./parts/greet.j2",
    ):
        with pytest.raises(TemplateSecurityError):
            render_template("{% include '" + name + "' %}", variables, template_root=root)
    with pytest.raises(TemplateError, match="not found"):
        render_template("{% include 'nope.j2' %}", variables, template_root=root)


def test_included_templates_are_checked_too(tmp_path: object) -> None:
    root = str(tmp_path)
    with open(os.path.join(root, "evil.j2"), "w") as fh:
        fh.write("{{ ''.__class__.__mro__ }}")
    with pytest.raises(TemplateSecurityError):
        render_template("{% include 'evil.j2' %}", {}, template_root=root)


@pytest.mark.parametrize("template", [
    "{{ ('%(a)199999s' * 15000) % {'a': 1} }}",  # each width under the cap, together 3 GB
    "{{ (0).to_bytes(4000000000, 'big')|length }}",  # int methods are not str's, and had no cap
    "{% set b = (0).bit_length() %}{{ b.to_bytes(10, 'big') }}",
])
def test_memory_bombs_outside_str_methods_are_refused(template: str) -> None:
    t = time.monotonic()
    with pytest.raises((TemplateSecurityError, TemplateError)):
        render_template(template, {})
    assert time.monotonic() - t < 1  # refused before anything was built


def test_the_dict_global_cannot_mutate_the_callers_data() -> None:
    """dict.update(cfg, ...) on the type passed the immutable sandbox, which checks instances only."""
    v = {"params": {"a": 1}, "cfg": {"x": 1}}
    for template in ("{% set z = dict.update(cfg, {'x': 'pwned'}) %}{{ cfg.x }}", "{{ dict.clear(params) }}",
                     "{{ dict['update'](cfg, {}) }}"):
        with pytest.raises(TemplateSecurityError):
            render_template(template, v)
    assert v == {"params": {"a": 1}, "cfg": {"x": 1}}
    assert render_template("{{ dict(a=1, b=2)|length }}", {}) == "2"  # building one still works
    assert render_template("{{ (7).bit_length() }} {{ (2.5).is_integer() }}", {}) == "3 False"
