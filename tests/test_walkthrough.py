"""WALKTHROUGH.md, the classroom plan, checked against the programs it runs.

A teacher reads a command off the page and types it in front of a class: it
must exist, and it must print what the page says it prints.

  * every stage has its section, with the six steps (predict, run, point at,
    why with a link to the stage README, break it, check with a folded answer);
  * every command of a ```sh block names something that exists: a stage
    binary whose --help lists every long flag it is given and every word given
    to a flag (`--mode article`), a script of the repository whose --help does
    the same, or one of the few outside tools the page uses; so does every
    long flag the prose of a stage's section names in `code`;
  * every whole diagram line the prose of a stage's section quotes in `code`
    (a note, or a message `a->>b: ...`) is a line of a diagram in the stage's
    README, which the stage's own tests compare with a fresh run;
  * every ```text block right after a ```sh block is output of that block's
    first command: each quoted line is a whole line of a fresh run, where
    `[role X]` (X one capital letter), PID, INODE and PORT stand for numbers
    and `...` for the rest of the text;
  * the timing table gives every stage its minutes, and they sum to 90.
"""

import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache

import pytest

from conftest import ROOT, WAIT, binary, readme_diagrams, run
from test_readmes import fenced_blocks

PAGE = ROOT / "WALKTHROUGH.md"
STAGES = sorted(d.name for d in ROOT.iterdir() if d.is_dir() and re.match(r"^\d\d-", d.name))
# Outside tools the page may name; their own flags are theirs, not checked here.
TOOLS = {"curl", "kill"}
TOTAL_MINUTES = 90


def page():
    assert PAGE.exists(), "WALKTHROUGH.md is missing"
    return PAGE.read_text(encoding="utf-8")


def sections(text):
    """{stage: (first line number, the section's lines)} for `## NN-name` headings."""
    lines = text.split("\n")
    heads = [(i, l) for i, l in enumerate(lines, 1) if l.startswith("## ")]
    out = {}
    for k, (i, head) in enumerate(heads):
        end = heads[k + 1][0] if k + 1 < len(heads) else len(lines) + 1
        name = head[3:].split(":")[0].strip()
        if name in STAGES:
            assert name not in out, f"two sections for {name}"
            out[name] = (i, lines[i - 1 : end - 1])
    return out


def commands(block_lines):
    """The commands of a ```sh block, each split as the shell would (comments
    dropped, backslash continuations joined)."""
    out, cur = [], ""
    for line in block_lines:
        cur += line
        if cur.endswith("\\"):
            cur = cur[:-1]
            continue
        words = shlex.split(cur, comments=True)
        if words:
            out.append(words)
        cur = ""
    assert not cur, "a ```sh block ends in a backslash continuation"
    return out


def stage_binary(word):
    """'01-basic-fork/basic_fork' for './01-basic-fork/basic_fork', else None."""
    m = re.match(r"^(?:\./)?(\d\d-[^/]+/[^/]+)$", word)
    return m.group(1) if m and m.group(1).split("/")[0] in STAGES else None


@lru_cache(maxsize=None)
def help_of(what):
    """--help of a stage binary ('NN-x/prog') or of a script ('py:NN-x/s.py')."""
    if what.startswith("py:"):
        p = subprocess.run(
            [sys.executable, str(ROOT / what[3:]), "--help"],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert p.returncode == 0, f"{what[3:]} --help: exit {p.returncode}\n{p.stderr}"
        return p.stdout + p.stderr
    r = run(what, "--help")
    return r.stdout + r.stderr


def unknown_words(words, help_text):
    """Long flags, and plain words given to them, that the help never mentions."""
    bad = []
    for k, w in enumerate(words):
        if w.startswith("--"):
            flag = w.split("=", 1)[0]
            if not re.search(re.escape(flag) + r"(?![\w-])", help_text):
                bad.append(flag)
        elif re.fullmatch(r"[a-z][a-z-]*", w) and k > 0 and words[k - 1].startswith("--"):
            if not re.search(r"(?<![\w-])" + re.escape(w) + r"(?![\w-])", help_text):
                bad.append(f"{words[k - 1]} {w}")
    return bad


def sh_blocks():
    """(first line, commands, the ```text block right after it or None)."""
    blocks = fenced_blocks(page())
    out = []
    for k, (lang, start, lines) in enumerate(blocks):
        if lang != "sh":
            continue
        after = blocks[k + 1] if k + 1 < len(blocks) else None
        # "right after": only prose between them, no other block
        text = after[2] if after and after[0] == "text" else None
        out.append((start, commands(lines), text))
    return out


def param(start, words, *rest):
    return pytest.param(start, words, *rest, id=f"line {start}: {' '.join(words)}"[:70])


def all_commands():
    return [param(start, words) for start, cmds, _ in sh_blocks() for words in cmds]


def test_every_stage_has_its_section():
    text = page()
    found = sections(text)
    assert sorted(found) == STAGES, f"sections {sorted(found)}, stages {STAGES}"
    for stage, (line, lines) in found.items():
        body = "\n".join(lines)
        for step in ("**Predict.**", "**Run.**", "**Point at.**", "**Why.**", "**Break it.**",
                     "**Check.**"):
            assert step in body, f"{stage} (line {line}): no {step}"
        assert f"]({stage}/README.md" in body, f"{stage}: no link to {stage}/README.md"
        assert re.search(r"<details><summary>[^<]+</summary>\n\n.+?\n\n</details>", body, re.S), (
            f"{stage}: no answer folded in <details>"
        )
        blocks = fenced_blocks(body)
        sh = [commands(b[2]) for b in blocks if b[0] == "sh"]
        assert sh and sh[0], f"{stage}: no ```sh block"
        first = stage_binary(sh[0][0][0])
        assert first and first.startswith(stage + "/"), (
            f"{stage}: the first command runs {sh[0][0][0]}, not this stage's program"
        )
        assert len(sh) >= 2, f"{stage}: no break-it command after the run"


@pytest.mark.parametrize("start,words", all_commands())
def test_command_names_what_exists(start, words):
    head = words[0]
    rel = stage_binary(head)
    if rel:
        assert os.path.isfile(binary(rel)), f"line {start}: {head}: no such program (did make run?)"
        bad = unknown_words(words[1:], help_of(rel))
        assert not bad, f"line {start}: {rel} --help never mentions {bad}"
    elif head in ("python3", "python"):
        script = words[1]
        assert (ROOT / script).is_file(), f"line {start}: no script {script}"
        bad = unknown_words(words[2:], help_of("py:" + script))
        assert not bad, f"line {start}: {script} --help never mentions {bad}"
    else:
        assert head in TOOLS, f"line {start}: {head!r} is not a program of this repository"


def section(stage):
    """(first line, text, the `code` spans of its prose) of a stage's section."""
    found = sections(page())
    if stage not in found:
        pytest.fail(f"no section for {stage}")
    line, lines = found[stage]
    body = "\n".join(lines)
    prose = re.sub(r"^```.*?^```", "", body, flags=re.S | re.M)
    return line, body, re.findall(r"`([^`\n]+)`", prose)


@pytest.mark.parametrize("stage", STAGES)
def test_flags_in_the_prose_exist(stage):
    line, body, spans = section(stage)
    # the programs this section runs, whose --help must name every flag it mentions
    helps = ""
    for lang, _, blines in fenced_blocks(body):
        if lang != "sh":
            continue
        for words in commands(blines):
            if stage_binary(words[0]):
                helps += help_of(stage_binary(words[0]))
            elif words[0].startswith("python"):
                helps += help_of("py:" + words[1])
    bad = []
    for span in spans:
        words = span.split()
        if any(w.startswith("--") for w in words):
            bad += unknown_words(words, helps)
    assert not bad, f"{stage} (line {line}): flags no program of the section knows: {bad}"


@pytest.mark.parametrize("stage", STAGES)
def test_quoted_diagram_lines_are_the_readmes(stage):
    line, _, spans = section(stage)
    quoted = [span for span in spans if re.match(r"^(Note over \w+|\w+->>\w+): ", span)]
    assert quoted, f"{stage}: the section points at no line of the diagram"
    drawn = {l.strip() for d in readme_diagrams(stage) for l in d.split("\n")}
    missing = [q for q in quoted if q not in drawn]
    assert not missing, f"{stage} (line {line}): not in any diagram of {stage}/README.md: {missing}"


def quoted_line_pattern(quoted):
    """A quoted line as a regex: [role X], PID, INODE, PORT are numbers, ... any text."""
    pat = ""
    m = re.match(r"^\[(\S+) [A-Z]\] ", quoted)
    if m:
        pat = r"\[" + re.escape(m.group(1)) + r" \d+\] "
        quoted = quoted[m.end() :]
    for k, part in enumerate(re.split(r"(\.\.\.|\bPID\b|\bINODE\b|\bPORT\b)", quoted)):
        if k % 2 == 0:
            pat += re.escape(part)
        else:
            pat += ".*" if part == "..." else r"\d+"
    return re.compile(pat)


def quoted_outputs():
    return [param(start, cmds[0], text) for start, cmds, text in sh_blocks() if text is not None]


def test_there_is_output_to_check():
    # one ```text block per run and per break-it at least
    assert len(quoted_outputs()) >= 2 * len(STAGES)


@pytest.mark.parametrize("start,words,quoted", quoted_outputs())
def test_quoted_output_is_real(start, words, quoted):
    rel = stage_binary(words[0])
    assert rel and "--serve" not in words, (
        f"line {start}: output is quoted only for a demo run of a stage program"
    )
    r = run(rel, *words[1:])
    missing = [
        q for q in quoted if q.strip() and not any(quoted_line_pattern(q).fullmatch(l)
                                                   for l in r.lines)
    ]
    assert not missing, (
        f"line {start}: `{' '.join(words)}` printed none of these lines:\n"
        + "\n".join(missing)
        + "\n--- it printed:\n"
        + r.stdout
    )


def test_timing_table_sums_to_90():
    text = page()
    assert "\n## Timing\n" in text, "no ## Timing section"
    table = text.split("\n## Timing\n", 1)[1]
    rows = {}
    for line in table.split("\n"):
        m = re.match(r"^\|\s*([^|]+?)\s*\|\s*(\d+)\s*\|$", line)
        if m:
            rows[m.group(1)] = int(m.group(2))
    total = rows.pop("total", None)
    assert sorted(rows) == STAGES, f"timing rows {sorted(rows)}, stages {STAGES}"
    assert sum(rows.values()) == TOTAL_MINUTES, f"stages sum to {sum(rows.values())} minutes"
    assert total == TOTAL_MINUTES, f"the total row says {total}"
    assert all(m > 0 for m in rows.values())
    after = table.split("\n| total |", 1)[1]
    assert re.search(r"skip in this order", after), "no order to skip in when time is short"
