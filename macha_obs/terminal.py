"""Untrusted text made inert before it reaches a terminal.

Alert names, journal lines, a model's words and anything a local user can put in the
state dir may carry control characters: a newline that forges a `risk: low` line, an
ANSI sequence that erases the line above, a bidi override that reverses what follows.
`inert` shows each of them as a visible escape instead (`\\n`, `\\x1b`, `\\u202e`), so a
field prints on one line and means what it says. Printable text, backslashes included,
passes unchanged: a literal `\\x1b` in the data reads the same as an escaped ESC, which
is harmless, since neither can move the cursor.

It imports nothing of ours, so every room that renders text for a person may use it.
"""

from __future__ import annotations

import unicodedata

# Cc: C0, DEL and C1; Cf: bidi and other format controls (U+202E, U+2066-2069, U+200B-200F,
# U+FEFF, tag characters); Zl, Zp: U+2028, U+2029; Cs: lone surrogates, which no terminal
# encoding can carry (printing one raises); Cn: unassigned, so a later Unicode cannot
# turn one into a control.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def is_unsafe(char: str) -> bool:
    """Whether one character could act on a terminal (or on what it shows) when printed."""
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def inert(text: object) -> str:
    """`text` (or its str()) on one line, every control character a visible escape."""
    value = text if isinstance(text, str) else str(text)
    if value.isprintable():  # the common case, and cheap: no Cc, Cf, Z* but space, Cs, Cn
        return value
    return "".join(_escape(c) if is_unsafe(c) else c for c in value)
