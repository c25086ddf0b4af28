"""The Chinese twins (README.zh-CN.md beside every README.md, and
WALKTHROUGH.zh-CN.md) are kept in step with the English by this test.

For every pair: the first lines link to each other; every fenced code block
(Mermaid diagrams and quoted lessons included) is identical; every table
carries the same numbers in the same order; the headings have the same
levels in the same order (each English section has its Chinese
counterpart); and a stage README's closing navigation line points to the
Chinese pages of the neighbouring stages. A change to one language that
forgets the other fails here. (Links are checked for every Markdown file,
both languages, by tests/test_readmes.py.)
"""

import re

import pytest

from conftest import ROOT
from test_readmes import navigation_line

ENGLISH = sorted(
    p.relative_to(ROOT).as_posix()
    for p in list(ROOT.glob("*.md")) + list(ROOT.glob("*/README.md")) + list(ROOT.glob("*/*/README.md"))
    if p.name in ("README.md", "WALKTHROUGH.md")
    and not any(part.startswith(".") or part.startswith("build") for part in p.parts)
)
STAGES = sorted(d.name for d in ROOT.iterdir() if d.is_dir() and re.match(r"^\d\d-", d.name))


def twin(en):
    return en[: -len(".md")] + ".zh-CN.md"


def read(rel):
    return (ROOT / rel).read_text(encoding="utf-8")


def fenced(text):
    return re.findall(r"^```.*?^```", text, re.S | re.M)


def outside_fences(text):
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def table_numbers(text):
    nums = []
    for line in outside_fences(text).split("\n"):
        if line.lstrip().startswith("|"):
            nums.extend(re.findall(r"\d+(?:[.,]\d+)*", line))
    return nums


def headings(text):
    return [len(m.group(1)) for m in re.finditer(r"^(#{1,6}) ", outside_fences(text), re.M)]


@pytest.mark.parametrize("en", ENGLISH)
def test_twin_exists_and_links_back(en):
    zh = twin(en)
    assert (ROOT / zh).exists(), f"{en} has no Chinese twin {zh}"
    name_en, name_zh = en.rsplit("/", 1)[-1], zh.rsplit("/", 1)[-1]
    assert read(en).split("\n", 1)[0] == f"English | [中文]({name_zh})"
    assert read(zh).split("\n", 1)[0] == f"[English]({name_en}) | 中文"


@pytest.mark.parametrize("en", ENGLISH)
def test_code_blocks_identical(en):
    zh = twin(en)
    if not (ROOT / zh).exists():
        pytest.fail(f"{zh} is missing")
    a, b = fenced(read(en)), fenced(read(zh))
    assert len(a) == len(b), f"{en} has {len(a)} code blocks, {zh} has {len(b)}"
    for i, (x, y) in enumerate(zip(a, b), 1):
        assert x == y, f"code block #{i} differs between {en} and {zh}"


@pytest.mark.parametrize("en", ENGLISH)
def test_tables_have_the_same_numbers(en):
    zh = twin(en)
    if not (ROOT / zh).exists():
        pytest.fail(f"{zh} is missing")
    assert table_numbers(read(en)) == table_numbers(read(zh)), f"the tables of {en} and {zh} differ in their numbers"


@pytest.mark.parametrize("en", ENGLISH)
def test_every_section_has_its_counterpart(en):
    zh = twin(en)
    if not (ROOT / zh).exists():
        pytest.fail(f"{zh} is missing")
    assert headings(read(en)) == headings(read(zh)), f"{en} and {zh} differ in their sections"


@pytest.mark.parametrize("stage", STAGES)
def test_chinese_stage_navigation(stage):
    want = navigation_line(stage, "README.zh-CN.md", ("上一节：", "目录", "下一节："))
    zh = ROOT / stage / "README.zh-CN.md"
    if not zh.exists():
        pytest.fail(f"{stage}/README.zh-CN.md is missing")
    last = zh.read_text(encoding="utf-8").rstrip("\n").split("\n")[-1]
    assert last == want, f"{stage}/README.zh-CN.md should end with\n{want}\nnot\n{last}"
