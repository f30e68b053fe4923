"""User text made safe per output format (profiler.report.text): exact but for what the format
cannot carry or would act on. Expectations written out character by character."""

from __future__ import annotations

import math

from profiler.report.text import display_text, json_safe, md_cell, spreadsheet_text, utf8_text


def test_display_text_cleans_controls_and_bidi_overrides_and_keeps_the_rest():
    assert display_text("a\tb\nc\rd") == "a b c d"
    assert display_text("red\x1b[31m\x00\x7f\x9b") == "red\ufffd[31m\ufffd\ufffd\ufffd"
    assert display_text("abc\u202etxt.exe") == "abc\ufffdtxt.exe"  # "Trojan Source"
    assert display_text("x\ud800y") == "x\ufffdy"
    assert display_text("é 日本 ok") == "é 日本 ok"


def test_md_cell_makes_no_markup():
    assert md_cell("**bold** <b> & [x](y)") == r"\*\*bold\*\* &lt;b&gt; &amp; \[x\]\(y\)"
    assert md_cell("# h\n- i") == r"\# h \- i"
    assert md_cell("http://evil.example") == r"http\:\/\/evil\.example"
    assert md_cell("plain words") == "plain words"


def test_json_and_utf8_text_replace_only_what_strict_json_cannot_hold():
    assert utf8_text("x\ud800y\udfffz") == "x\ufffdy\ufffdz"
    assert json_safe({"k\ud800": [1.0, math.inf, (math.nan, "v\n")], "n": 3}) == {
        "k\ufffd": [1.0, None, [None, "v\n"]], "n": 3}  # fmt: skip


def test_spreadsheet_text_defuses_formulas_with_one_apostrophe():
    for cell in ("=SUM(1)", "+1", "-2", "@A1", "\tx", "\rx", "\nx", "\uff1dSUM(1)", "\uff20x"):
        assert spreadsheet_text(cell) == "'" + cell, repr(cell)
    assert spreadsheet_text("a=b") == "a=b" and spreadsheet_text("1-2") == "1-2"
    assert spreadsheet_text("x\ud800") == "x\ufffd"
