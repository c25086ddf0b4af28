"""The graded exercises stay honest (exercises/README.md).

For every exercise: the untouched skeleton builds and fails `make
exercise-NN` (an exercise that a skeleton passes grades nothing), in a
sentence of the exercise's table and not a traceback, without touching the
stage's own binaries; the reference passes `make exercise-NN USE=reference`;
every test an exercise runs has its sentence; and the skeleton is the
stage's file outside the lessons (a change to the stage must be carried
into it).

Each exercise's build trees are made once (build-exercise/NN/ and
build-exercise/NN-reference/); the skeleton's run stops at its first failing
test (FIRST=1), so the file stays quick.

Under `make check` (SAN=1) the file is skipped: the exercises grade the very
stage code whose own tests `make check` already runs under the sanitizers,
and the grading machinery is the same in both builds.
"""

import difflib
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SAN

sys.path.insert(0, str(ROOT / "exercises"))
from behaviours import EXERCISES  # noqa: E402

pytestmark = pytest.mark.skipif(SAN, reason="the sanitizer run of the stage tests covers the same code")

# A bound on one `make exercise-NN`: a build of one stage and its tests.
GRADE = 600


def grade(nn, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("SAN", "EXERCISE_BUILD", "USE", "FIRST")}
    return subprocess.run(["make", "-s", "--no-print-directory", f"exercise-{nn}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=GRADE, env=env)


def sentences(nn):
    return {s for _, s in EXERCISES[nn]["behaviours"]}


def stamp(path):
    st = os.stat(ROOT / path)
    return st.st_ino, st.st_mtime_ns


@pytest.mark.parametrize("nn", sorted(EXERCISES))
def test_untouched_skeleton_builds_and_fails(nn):
    ex = EXERCISES[nn]
    before = {t: stamp(t) for t in ex["targets"]}
    r = grade(nn, "FIRST=1")
    out = r.stdout
    assert r.returncode != 0, f"the skeleton of exercise {nn} passes its grading:\n{out}"
    assert "does not build" not in out, f"the skeleton of exercise {nn} does not build:\n{out}{r.stderr}"
    assert "Traceback" not in out + r.stderr
    told = [line[4:] for line in out.splitlines() if line.startswith("  - ")]
    assert re.search(rf"^exercise {nn}: \d+ of \d+ behaviours hold; still failing", out, re.M), out
    assert told, out
    # the sentences come from the table (a regex's groups filled in), not from pytest
    assert all(any(s.split("\\")[0] in t for s in sentences(nn)) for t in told), told
    # the reference binaries were neither rebuilt nor overwritten
    assert {t: stamp(t) for t in ex["targets"]} == before


@pytest.mark.parametrize("nn", sorted(EXERCISES))
def test_reference_passes(nn):
    r = grade(nn, "USE=reference")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"exercise {nn}: done - all " in r.stdout


@pytest.mark.parametrize("nn", sorted(EXERCISES))
def test_every_test_has_a_sentence(nn):
    r = subprocess.run([sys.executable, str(ROOT / "exercises" / "grade.py"), nn, "--list"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    listed = [line for line in r.stdout.splitlines() if "::" in line]
    assert len(listed) >= 8, r.stdout  # the behaviours of a core take more than a few tests


def _allowed_lines(path):
    """Line numbers (1-based) of a stage file that a skeleton may change: its
    header comment and every lesson, markers included."""
    sys.path.insert(0, str(ROOT / "common"))
    import lesson

    lines = path.read_text(encoding="utf-8").split("\n")
    allowed = set(range(1, lines.index(" */") + 2))
    for les in lesson.lessons_in(path):
        allowed |= set(range(les.first, les.last + 1))
    return allowed


@pytest.mark.parametrize("nn", sorted(EXERCISES))
def test_skeleton_is_the_stage_file_outside_its_lessons(nn):
    """A skeleton differs from its stage's file only in the header comment
    and inside lessons: a change to the stage elsewhere must be carried into
    the skeleton, or the student builds against code that is no longer the
    stage's."""
    ex = EXERCISES[nn]
    ref_path = ROOT / ex["file"]
    ref = ref_path.read_text(encoding="utf-8").split("\n")
    skel = (ROOT / "exercises" / ex["dir"] / ref_path.name).read_text(encoding="utf-8").split("\n")
    allowed = _allowed_lines(ref_path)
    outside = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ref, skel, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        # lines replaced or deleted: each must be allowed; lines inserted: next to an allowed one
        touched = range(i1 + 1, i2 + 1) if i2 > i1 else [i1, i1 + 1]
        if (i2 > i1 and not all(n in allowed for n in touched)) or \
           (i2 == i1 and not any(n in allowed for n in touched)):
            outside.append(f"{ex['file']}:{i1 + 1}-{max(i2, i1 + 1)}")
    assert not outside, (f"exercises/{ex['dir']}/{ref_path.name} differs from {ex['file']} outside its "
                         f"lessons, at {outside}: carry the stage's change into the skeleton")
