#!/usr/bin/env python3
"""grade.py - build one stage with a student's file and grade it with that
stage's own tests. `make exercise-NN` runs it (exercises/README.md).

    python3 exercises/grade.py NN [--use reference] [--first] [--list]

1. A build tree of its own, build-exercise/NN/ (build-exercise/NN-reference/
   with --use reference): the repository's Makefile and sources as symbolic
   links, except the exercise's file, which links to the student's copy in
   exercises/. The reference binaries are never touched. SAN=1 in the
   environment builds and runs the sanitizer build there.
2. `make` there builds the stage's binaries.
3. pytest runs the stage's tests that check the lesson's behaviours against
   those binaries (EXERCISE_BUILD tells tests/conftest.py where they are),
   in rounds, the quick ones first: a round runs once every earlier one
   passed.
4. Every failing test is told as the behaviour it checks, in one sentence;
   pytest's own report is kept in the build tree (pytest.log).
--first stops at the first failing test; --list prints every test the
exercise runs with its sentence. Exit 0 when every behaviour holds, 1 when
one fails, 2 when the stage does not build (or on a bad argument).
"""

import argparse
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from behaviours import EXERCISES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCE_SUFFIXES = (".c", ".h", ".mk", ".sh")


def python_with_pytest():
    """This interpreter if it has pytest, else the one common/need.sh finds
    (or installs): `make exercise-NN` starts us with that one already."""
    try:
        import pytest  # noqa: F401
        return sys.executable
    except ImportError:
        r = subprocess.run([str(ROOT / "common" / "need.sh"), "python"], capture_output=True, text=True)
        return r.stdout.strip() or sys.executable


def link_tree(tree, swap_from, swap_to):
    """Fill `tree` with links to the repository's Makefile and the sources of
    common/ and every stage folder; `swap_from` (a path relative to the
    repository) links to `swap_to` instead. Links that are no longer wanted
    go; what the build wrote there stays."""
    want = {Path("Makefile"): ROOT / "Makefile"}
    for d in sorted(ROOT.iterdir()):
        if d.is_dir() and (d.name == "common" or re.match(r"^\d\d-", d.name)):
            for f in d.iterdir():
                if f.is_file() and f.suffix in SOURCE_SUFFIXES:
                    want[f.relative_to(ROOT)] = f
    want[Path(swap_from)] = swap_to
    for rel, target in want.items():
        link = tree / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        rel_target = os.path.relpath(target, link.parent)
        if link.is_symlink() and os.readlink(link) == rel_target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(rel_target)
    for link in tree.rglob("*"):
        if link.is_symlink() and link.relative_to(tree) not in want:
            link.unlink()


def build(tree, targets, san):
    """make the targets in the tree; True when it built."""
    cmd = ["make", "-s", "--no-print-directory", "-C", str(tree)]
    cmd += ["SAN=1"] if san else []
    out = [("build-asan/" if san else "") + t for t in targets]
    r = subprocess.run(cmd + out, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stdout.write(r.stdout + r.stderr)
    return r.returncode == 0


def sentence_of(ex, test_id):
    """The behaviour a test checks: the first pattern of the exercise's table
    that matches `file::name[params]`."""
    for pattern, sentence in ex["behaviours"]:
        m = re.search(pattern, test_id)
        if m:
            return m.expand(sentence)  # \\1: what the pattern's group matched
    return None


def results(junit):
    """{test id: "passed" | "failed" | "skipped"} from pytest's JUnit XML."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = case.get("classname").replace(".", "/") + ".py::" + case.get("name")
        if case.find("failure") is not None or case.find("error") is not None:
            out[test_id] = "failed"
        elif case.find("skipped") is not None:
            out.setdefault(test_id, "skipped")
        else:
            out.setdefault(test_id, "passed")
    return out


def main(argv):
    ap = argparse.ArgumentParser(description="build stage NN with the student's file and grade it")
    ap.add_argument("nn", help="the exercise: " + ", ".join(sorted(EXERCISES)))
    ap.add_argument("--use", choices=["student", "reference"], default="student")
    ap.add_argument("--first", action="store_true", help="stop at the first failing test")
    ap.add_argument("--list", action="store_true", help="print the tests and their sentences")
    a = ap.parse_args(argv)
    ex = EXERCISES.get(a.nn)
    if ex is None:
        ap.error(f"no exercise {a.nn!r}: there are {', '.join(sorted(EXERCISES))}")
    py = python_with_pytest()
    if a.list:
        cmd = [py, "-m", "pytest", "-q", "--co", "-p", "no:cacheprovider",
               "--rootdir", str(ROOT)] + [t for tests in ex["tests"] for t in tests]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        ids = [l for l in r.stdout.splitlines() if "::" in l]
        for test_id in ids:
            print(f"{test_id}\n    {sentence_of(ex, test_id) or 'NO SENTENCE'}")
        return 0 if r.returncode == 0 and ids and all(sentence_of(ex, t) for t in ids) else 1

    san = os.environ.get("SAN") == "1"
    student = ROOT / "exercises" / ex["dir"] / Path(ex["file"]).name
    mine = a.use == "student"
    tree = ROOT / "build-exercise" / (a.nn if mine else a.nn + "-reference")
    what = student.relative_to(ROOT) if mine else Path(ex["file"])
    print(f"exercise {a.nn}: stage {ex['file'].split('/')[0]} built with {what} in "
          f"{tree.relative_to(ROOT)}/{'build-asan/' if san else ''}", flush=True)
    tree.mkdir(parents=True, exist_ok=True)
    (tree.parent / ".gitignore").write_text("# build trees of exercises/grade.py\n*\n")
    link_tree(tree, ex["file"], student if mine else ROOT / ex["file"])
    if not build(tree, ex["targets"], san):
        print(f"exercise {a.nn}: {what} does not build (the compiler's messages are above)")
        return 2

    # The tests run in rounds (the exercise's "tests" list of lists), the
    # quick ones first: a round runs only when every test before it passed,
    # so an unfinished file is told what fails within seconds.
    env = dict(os.environ, EXERCISE_BUILD=str(tree), PYTHONDONTWRITEBYTECODE="1")
    verdict, untried = {}, 0
    log = tree / "pytest.log"
    log.write_text("")
    for k, tests in enumerate(ex["tests"]):
        if any(res == "failed" for res in verdict.values()):
            untried += 1
            continue
        junit = tree / f"pytest-{k}.xml"
        junit.unlink(missing_ok=True)  # a report of an earlier run must not pass for this one
        cmd = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
               "-o", "junit_family=xunit1", "--rootdir", str(ROOT)] + (["-x"] if a.first else [])
        with open(log, "a") as f:
            r = subprocess.run(cmd + tests, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        if r.returncode not in (0, 1) or not junit.exists():
            print(f"exercise {a.nn}: the tests could not run (pytest exit {r.returncode}); "
                  f"see {log.relative_to(ROOT)}")
            return 2
        # A behaviour holds when every test that checks it passed (or was
        # skipped: the running kernel lacks what it needs).
        for test_id, res in results(junit).items():
            s = sentence_of(ex, test_id) or f"{test_id} (a test without a sentence)"
            if res == "failed" or s not in verdict:
                verdict[s] = res

    failing = [s for s, res in verdict.items() if res == "failed"]
    held = len(verdict) - len(failing)
    if not failing:
        print(f"exercise {a.nn}: done - all {held} behaviours hold")
        return 0
    stopped = " (stopped at the first)" if a.first else ""
    print(f"exercise {a.nn}: {held} of {len(verdict)} behaviours hold; still failing{stopped}:")
    for s in failing:
        print(f"  - {s}")
    if untried:
        print(f"(then {untried} more round{'s' if untried > 1 else ''} of tests, once these pass)")
    print(f"(pytest's own report: {log.relative_to(ROOT)})")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
