"""House style that a compiler does not check.

Section banners: every C source has one banner style, a single comment line

    /* ---- title ---------------------------------------------------------- */

exactly 79 characters wide (dashes pad the title). Any comment line that
looks like a banner (it opens with `/* ---`, `/* ===` or `/*****`) must be
one. The test is parametrised per file, so each file's failure names it.
"""

import re

import pytest

from conftest import ROOT

BANNER_LIKE = re.compile(r"^\s*/\*\s*(---|===|\*\*\*\*)")
BANNER = re.compile(r"^/\* ---- \S(?:.*\S)? -+ \*/$")
WIDTH = 79

SOURCES = sorted(
    p.relative_to(ROOT).as_posix()
    for p in ROOT.glob("*/*")
    if p.suffix in (".c", ".h") and not p.parts[len(ROOT.parts)].startswith(("build", "."))
)


def banner_problems(text):
    """(line number, line) of every banner-like line that is not the one style."""
    bad = []
    for i, line in enumerate(text.split("\n"), 1):
        if BANNER_LIKE.match(line) and not (BANNER.match(line) and len(line) == WIDTH):
            bad.append((i, line))
    return bad


def test_banner_rule_itself():
    good = "/* ---- the demo: the worker " + "-" * 47 + " */"
    assert len(good) == WIDTH and banner_problems(good) == []
    for wrong in (
        good[:-3] + "- */",                 # 80 wide
        good.replace("/* ---- ", "/* --- "),  # three dashes before the title
        "/* " + "-" * 73 + " */",            # no title
        "/* ==== the demo " + "=" * 58 + " */",
        "/*************** the demo ***/",
        "\t/* ---- indented " + "-" * 52 + " */",
    ):
        assert banner_problems(wrong), wrong


@pytest.mark.parametrize("path", SOURCES)
def test_one_banner_style(path):
    bad = banner_problems((ROOT / path).read_text(encoding="utf-8"))
    assert not bad, f"{path}: banners not in the house style (79 wide, '/* ---- title ---- */'): " + \
        "; ".join(f"line {i}" for i, _ in bad)
