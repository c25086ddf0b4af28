"""The lesson markers and the README excerpts that quote them.

Every stage marks the lines a student must learn with
`/* lesson: NAME */ ... /* end lesson */` (common/lesson.py reads them; `make
lesson-NN` prints them). Each stage README quotes every lesson of its folder
in a ```c block, markers included, and each quotation must be exactly what the
source holds - so the README and the code cannot drift apart.
"""

import re
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "common"))
import lesson  # noqa: E402

STAGES = sorted(d.name for d in ROOT.iterdir() if d.is_dir() and re.match(r"^\d\d-", d.name))


def test_lesson_names_are_unique():
    names = [les.name for les in lesson.all_lessons()]
    dup = sorted({n for n in names if names.count(n) > 1})
    assert not dup, f"lesson names used twice: {dup}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_marks_its_lessons(stage):
    assert lesson.lessons_under(ROOT / stage), f"{stage}: no /* lesson: NAME */ markers"


@pytest.mark.parametrize("stage", STAGES)
def test_readme_quotes_every_lesson_exactly(stage):
    by_name = {les.name: les for les in lesson.all_lessons()}
    readme = ROOT / stage / "README.md"
    quotes = lesson.quoted(readme)
    for name, text in quotes:
        assert name in by_name, f"{stage}/README.md quotes lesson {name}, which no source marks"
        src = by_name[name]
        assert text == src.text, f"{stage}/README.md: the excerpt of {name} differs from {src.where()}"
    quoted_names = {name for name, _ in quotes}
    missing = [les.where() for les in lesson.lessons_under(ROOT / stage) if les.name not in quoted_names]
    assert not missing, f"{stage}/README.md does not quote: {missing}"


@pytest.mark.parametrize("stage", STAGES)
def test_readme_opens_with_new_in_this_stage(stage):
    text = (ROOT / stage / "README.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections and sections[0].strip() == "New in this stage", (
        f"{stage}/README.md: the first section is {sections[:1]}, not 'New in this stage'")


@pytest.mark.parametrize("stage", STAGES)
def test_make_lesson_prints_the_excerpts(stage):
    nn = stage[:2]
    r = subprocess.run(["make", "-s", f"lesson-{nn}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for les in lesson.lessons_under(ROOT / stage):
        assert f"==> {les.where()}  ({les.name})" in r.stdout
