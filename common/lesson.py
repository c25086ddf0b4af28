#!/usr/bin/env python3
"""lesson.py - the lines a student must learn, as the sources mark them.

A lesson is a run of source lines between two marker lines:

    /* lesson: NAME */
    ... the code ...
    /* end lesson */

(markers may be indented). `make lesson-NN` prints every lesson of stage NN
with its file:line; each stage README quotes the same lines, markers
included, in a ```c block under "New in this stage", and tests/test_lessons.py
checks that every quotation is exactly what the source holds.

    python3 common/lesson.py DIR...   print the lessons found under each DIR
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^\s*/\* lesson: ([A-Za-z0-9_.-]+) \*/\s*$")
END = re.compile(r"^\s*/\* end lesson \*/\s*$")


class Lesson:
    def __init__(self, name, path, first, last, text):
        self.name, self.path, self.first, self.last, self.text = name, path, first, last, text

    def where(self):
        return f"{self.path}:{self.first}-{self.last}"


def lessons_in(path):
    """The lessons of one source file, in order. Raises ValueError on a marker
    that is not closed, or closed twice."""
    rel = Path(path).resolve().relative_to(ROOT).as_posix()
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    found, open_at, name = [], None, None
    for i, line in enumerate(lines, 1):
        m = BEGIN.match(line)
        if m:
            if open_at is not None:
                raise ValueError(f"{rel}:{i}: lesson {m.group(1)} opens inside lesson {name}")
            open_at, name = i, m.group(1)
        elif END.match(line):
            if open_at is None:
                raise ValueError(f"{rel}:{i}: end lesson without a lesson")
            text = "\n".join(lines[open_at - 1 : i])
            found.append(Lesson(name, rel, open_at, i, text))
            open_at = None
    if open_at is not None:
        raise ValueError(f"{rel}:{open_at}: lesson {name} is never closed")
    return found


def sources(directory):
    d = Path(directory)
    return sorted(p for p in d.iterdir() if p.suffix in (".c", ".h") and p.is_file())


def lessons_under(directory):
    out = []
    for p in sources(directory):
        out.extend(lessons_in(p))
    return out


def all_lessons():
    """Every lesson of every stage folder (NN-name/)."""
    out = []
    for d in sorted(ROOT.iterdir()):
        if d.is_dir() and re.match(r"^\d\d-", d.name):
            out.extend(lessons_under(d))
    return out


FENCE = re.compile(r"^```c\n(.*?)\n```$", re.S | re.M)


def quoted(readme):
    """The ```c blocks of a README that quote a lesson (first line a lesson
    marker): a list of (name, text)."""
    out = []
    for m in FENCE.finditer(Path(readme).read_text(encoding="utf-8")):
        body = m.group(1)
        first = body.split("\n", 1)[0]
        b = BEGIN.match(first)
        if b:
            out.append((b.group(1), body))
    return out


def main(argv):
    if not argv:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    status = 0
    for d in argv:
        found = lessons_under(ROOT / d)
        if not found:
            print(f"{d}: no lesson markers", file=sys.stderr)
            status = 1
        for les in found:
            print(f"==> {les.where()}  ({les.name})")
            width = len(str(les.last))
            for k, line in enumerate(les.text.split("\n"), les.first):
                print(f"{k:>{width}}  {line}")
            print()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
