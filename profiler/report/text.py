"""User text made safe for each output format, in one place: :func:`display_text` (Markdown,
HTML, a terminal), :func:`md_cell` (inert Markdown), :func:`utf8_text` and :func:`json_safe`
(strict JSON), :func:`spreadsheet_text` (a CSV cell a spreadsheet opens). Each keeps the text
exact but for what its format cannot carry or would act on."""

from __future__ import annotations

import math
import re
from typing import Any

# Lone surrogates: no UTF-8 file or strict JSON parser takes them.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters a display format (Markdown, HTML, a terminal) must not pass on as they are: C0 and
# C1 controls, DEL, lone surrogates (unencodable as UTF-8) and the bidirectional overrides and
# isolates that reorder what is shown ("Trojan Source").
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def display_text(text: str) -> str:
    """User text for a display format: tab, newline and carriage return become a space; other
    control characters, lone surrogates and bidirectional overrides become U+FFFD; everything
    else is kept."""
    if text.isprintable() and not _BIDI.intersection(text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in "\t\n\r":
            out.append(" ")
        elif code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000 or ch in _BIDI:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def utf8_text(text: str) -> str:
    """``text`` with lone surrogates (which no UTF-8 file or strict JSON parser takes) replaced
    by U+FFFD; everything else exact."""
    return _SURROGATE.sub("\ufffd", text)


_MD_ESCAPED = frozenset("\\`*_{}[]()#+-.!|~:\"'$%,/;=?@^")
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md_cell(text: str) -> str:
    """User text as inert Markdown (CommonMark and GitHub's tables, strikethrough and autolinks):
    ``&``, ``<`` and ``>`` become entities, every other ASCII punctuation character that can start
    or end markup (emphasis, code, links, images, headings, lists, tables, ``://`` and ``www.``
    autolinks) gets a backslash, and newlines and control characters are cleaned as in
    :func:`display_text`, so the text reads exactly as written and makes no markup."""
    out = []
    for ch in display_text(text):
        if ch in _MD_ENTITIES:
            out.append(_MD_ENTITIES[ch])
        elif ch in _MD_ESCAPED:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def json_safe(value: Any) -> Any:
    """``value`` (dicts, lists, tuples, strings, numbers) ready for strict JSON: strings (keys
    too) through :func:`utf8_text`, non-finite floats as ``None`` (unknown, not a number JSON
    has). :func:`json.dumps` escapes control characters itself."""
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# What makes a spreadsheet (Excel, LibreOffice, Google Sheets) read a cell as a formula when it
# starts a cell, after OWASP's CSV Injection advice, plus the full-width forms some locales treat
# the same way, and a leading newline.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_text(text: str) -> str:
    """A user-supplied CSV cell that a spreadsheet shows as text: OWASP's CSV Injection advice,
    a leading apostrophe on a cell that starts with ``=``, ``+``, ``-``, ``@``, tab, carriage
    return (or newline, or a full-width ``=+-@``), so it is never evaluated; the csv module
    quotes and doubles quotes as needed. Lone surrogates become U+FFFD (UTF-8 cannot hold
    them). Any other text is written exactly."""
    if text.startswith(FORMULA_TRIGGERS):
        text = "'" + text
    return utf8_text(text)
