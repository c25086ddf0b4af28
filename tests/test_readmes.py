"""What a student sees on the rendered page.

A code-hosting site shows a README in a content column about 890 px wide.
A fenced line longer than about 100 characters is cut off at the right edge,
and a Mermaid diagram wider than the column is shrunk until its text is hard
to read. These tests keep every README within those bounds, and keep the
navigation between stages working.
"""

import re
from pathlib import Path

import pytest

from conftest import ROOT

READMES = sorted(
    p.relative_to(ROOT).as_posix()
    for p in ROOT.rglob("*.md")
    if not any(part.startswith(".") or part in ("build-asan", "build-fuzz", "build-mutate") for part in p.parts)
)
STAGES = sorted(d.name for d in ROOT.iterdir() if d.is_dir() and re.match(r"^\d\d-", d.name))

# A monospace line of 100 characters is about as wide as the 890 px column.
FENCED_MAX = 100
# The widest note or message label of a diagram, in characters. Mermaid sizes
# a sequence diagram by its lifelines' spacing and its widest label. Rendered
# with Mermaid 11 in a headless Chromium, with the narrower actor boxes every
# diagram asks for (the init directive common/narrate.c writes), the widest
# diagram here - five lifelines, or three with stage 05's 48-character
# handshake note - is 876 px: within the column, at 100%. The diagram that
# had been shrunk to 73% carried a 68-character note.
LABEL_MAX = 48


def fenced_blocks(text):
    """(language, first line number, lines) of every ``` block."""
    out, lang, start, buf = [], None, 0, None
    for i, line in enumerate(text.split("\n"), 1):
        if line.startswith("```"):
            if buf is None:
                lang, start, buf = line[3:].strip(), i + 1, []
            else:
                out.append((lang, start, buf))
                buf = None
        elif buf is not None:
            buf.append(line)
    assert buf is None, f"a ``` block opened at line {start - 1} is never closed"
    return out


@pytest.mark.parametrize("readme", READMES)
def test_fenced_lines_fit_the_column(readme):
    text = (ROOT / readme).read_text(encoding="utf-8")
    long = []
    for _, start, lines in fenced_blocks(text):
        for k, line in enumerate(lines, start):
            if len(line.expandtabs(8)) > FENCED_MAX:
                long.append(f"{readme}:{k} ({len(line.expandtabs(8))} chars)")
    assert not long, f"fenced lines over {FENCED_MAX} characters: {long}"


def diagram_labels(lines):
    """The text of every note and message of a sequenceDiagram."""
    for line in lines:
        s = line.strip()
        if re.match(r"^(Note\b|\w+\s*-[->x)]+[+-]?\s*\w+\s*:)", s) and ":" in s:
            yield s.split(":", 1)[1].strip()


@pytest.mark.parametrize("readme", READMES)
def test_diagram_labels_fit(readme):
    text = (ROOT / readme).read_text(encoding="utf-8")
    wide = []
    for lang, start, lines in fenced_blocks(text):
        if lang != "mermaid":
            continue
        for label in diagram_labels(lines):
            if len(label) > LABEL_MAX:
                wide.append(f"{readme} (diagram at line {start}): {label!r} ({len(label)} chars)")
    assert not wide, f"diagram labels over {LABEL_MAX} characters: {wide}"


def links(text):
    """Relative link targets of a Markdown text (no URLs, no pure anchors)."""
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        target = m.group(1)
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        yield target.split("#", 1)[0]


@pytest.mark.parametrize("readme", READMES)
def test_relative_links_resolve(readme):
    path = ROOT / readme
    broken = [t for t in links(path.read_text(encoding="utf-8")) if not (path.parent / t).exists()]
    assert not broken, f"{readme}: links to missing files: {broken}"


def navigation_line(stage, page="README.md", words=("Previous: ", "Top", "Next: ")):
    """The line a stage README ends with: the previous stage, the top page
    and the next stage, each link to `page` in that folder."""
    i = STAGES.index(stage)
    prev_word, top_word, next_word = words
    parts = []
    if i > 0:
        parts.append(f"{prev_word}[{STAGES[i - 1]}](../{STAGES[i - 1]}/{page})")
    parts.append(f"[{top_word}](../{page})")
    if i + 1 < len(STAGES):
        parts.append(f"{next_word}[{STAGES[i + 1]}](../{STAGES[i + 1]}/{page})")
    return " · ".join(parts)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_readme_links_previous_top_next(stage):
    want = navigation_line(stage)
    last = (ROOT / stage / "README.md").read_text(encoding="utf-8").rstrip("\n").split("\n")[-1]
    assert last == want, f"{stage}/README.md should end with the navigation line\n{want}\nnot\n{last}"
