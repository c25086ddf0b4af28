"""The graded exercises stay honest (exercises/README.md).

For every exercise: the untouched skeleton builds and fails `make
exercise-NN` (an exercise that a skeleton passes grades nothing), in a
sentence of the exercise's table and not a traceback, without touching the
stage's own binaries; the reference passes `make exercise-NN USE=reference`;
and every test an exercise runs has its sentence.

Each exercise's build trees are made once (build-exercise/NN/ and
build-exercise/NN-reference/); the skeleton's run stops at its first failing
test (FIRST=1), so the file stays quick.

Under `make check` (SAN=1) the file is skipped: the exercises grade the very
stage code whose own tests `make check` already runs under the sanitizers,
and the grading machinery is the same in both builds.
"""

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
