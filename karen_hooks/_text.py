"""Showing text that came from a plugin: control characters as visible escapes."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, line/paragraph separators, bidirectional overrides ("Trojan Source")
# and lone surrogates: what can move a terminal's cursor, set its title or clipboard (OSC 52),
# start a forged line in a log, reorder what a reader sees, or not be encodable at all.
_CONTROLS = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069\\ud800-\\udfff]")


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with every control character except those in ``keep`` shown as ``\\xNN``/``\\uNNNN``."""
    def show(m: re.Match[str]) -> str:
        c = m[0]
        return c if c in keep else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"

    return _CONTROLS.sub(show, text)
