"""Text that reaches a terminal: control characters in names are shown, never obeyed.

A file name may hold ESC (``ESC[31m`` recolours the screen, other sequences move the cursor
or set the window title), a newline (a table row splits in two), a carriage return, or
right-to-left overrides that reorder what is shown. Human output escapes them; ``--json``
keeps the exact strings. A name that was not UTF-8 shows its raw bytes as ``\\xNN``.
"""

from __future__ import annotations

import re

__all__ = ["escape", "terminal_safe"]

# C0, DEL, C1, bidirectional overrides and isolates, and lone surrogates (undecodable bytes).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_KEEP_NEWLINE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _shown(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape: the raw byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character (newline included) shown as an escape."""
    if text.isprintable():
        return text
    return _UNSAFE.sub(_shown, text)


def terminal_safe(text: str) -> str:
    """Whole output: every control character escaped except the newlines between lines."""
    if text.isprintable():
        return text
    return _UNSAFE_KEEP_NEWLINE.sub(_shown, text)
