#!/usr/bin/env python3
"""make mutate: put each lesson's mistake back into the real code, one at a
time, and check that the test suite notices.

Every stage teaches a mistake: a descriptor left open, a number still
watched, a sequence number off by one, a copy closed before the ack. A
break-it switch turns the mistake on for a demo; this harness goes further
and writes it into the normal path (mutate/catalogue.py, one small
replacement per mutant), builds that mutant in a directory of its own under
build-mutate/ (the checkout's binaries are never touched), and runs the tests
of its stage against it. A mutant is *killed* when at least one test fails,
and *survives* when they all pass - a gap in the suite, unless the catalogue
gives the reason it is equivalent.

    python3 mutate/run.py                 every mutant, two at a time
    python3 mutate/run.py ID...           just these
    python3 mutate/run.py --list          the catalogue
    python3 mutate/run.py --check         every replacement still applies (no build)
"""

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "mutate"))
from catalogue import MUTANTS  # noqa: E402

WORK = ROOT / "build-mutate"
BUILD_TIMEOUT = 300
TEST_TIMEOUT = 600


def applies(m):
    """None if the mutant's `old` text occurs exactly once in its file, else
    a sentence saying why not."""
    path = ROOT / m["file"]
    if not path.exists():
        return f"{m['file']} does not exist"
    n = path.read_text(encoding="utf-8").count(m["old"])
    if n != 1:
        return f"its text occurs {n} times in {m['file']}, not once"
    return None


def tracked_files():
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def built_files():
    """The checkout's binaries (`make all` ran first: they are up to date)."""
    out = subprocess.run(["git", "ls-files", "-oi", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    skip = ("build-", "__pycache__", ".pytest_cache")
    return [f for f in out.splitlines()
            if not any(part.startswith(skip) for part in Path(f).parts) and (ROOT / f).is_file()]


def make_tree(m):
    """A copy of the sources with the mutation applied: build-mutate/ID/.
    The checkout's binaries come along with their times (copy2), so make
    rebuilds only what depends on the mutated file."""
    d = WORK / m["id"]
    if d.exists():
        shutil.rmtree(d)
    for f in tracked_files() + built_files():
        dst = d / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst)
    path = d / m["file"]
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(m["old"], m["new"], 1), encoding="utf-8")
    return d


def python():
    return subprocess.run([str(ROOT / "common/need.sh"), "python"], capture_output=True,
                          text=True, check=True).stdout.strip()


def run_one(m, py):
    """(id, verdict, detail, seconds). verdict: killed | survived | build-failed | stale."""
    t0 = time.monotonic()
    why = applies(m)
    if why:
        return m["id"], "stale", why, 0.0
    d = make_tree(m)
    env = dict(os.environ)
    env.pop("SAN", None)
    b = subprocess.run(["make", "-s", "all"], cwd=d, capture_output=True, text=True,
                       timeout=BUILD_TIMEOUT, env=env)
    if b.returncode != 0:
        # A mutant the compiler rejects teaches nothing: the catalogue entry is wrong.
        return m["id"], "build-failed", (b.stderr or b.stdout)[-400:], time.monotonic() - t0
    cmd = [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rf", *m["tests"]]
    try:
        r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=TEST_TIMEOUT, env=env)
        out = r.stdout + r.stderr
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
        if r.returncode == 0:
            verdict, detail = "survived", "every test passed"
        elif r.returncode == 1 or failed:
            verdict, detail = "killed", ", ".join(failed) or "a test failed"
        else:
            verdict, detail = "killed", f"pytest exit {r.returncode}: " + out.strip().splitlines()[-1]
    except subprocess.TimeoutExpired:
        verdict, detail = "killed", f"the tests did not finish within {TEST_TIMEOUT} s"
    shutil.rmtree(d, ignore_errors=True)
    return m["id"], verdict, detail, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ids", nargs="*")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    a = ap.parse_args()
    chosen = [m for m in MUTANTS if not a.ids or m["id"] in a.ids]
    unknown = set(a.ids) - {m["id"] for m in MUTANTS}
    if unknown:
        print(f"mutate: no such mutant: {' '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if a.list:
        for m in chosen:
            print(f"{m['id']:28} {m['file']}: {m['mistake']}")
        return 0
    if a.check:
        bad = [(m["id"], applies(m)) for m in chosen if applies(m)]
        for i, why in bad:
            print(f"{i}: {why}")
        return 1 if bad else 0
    py = python()
    WORK.mkdir(exist_ok=True)
    t0 = time.monotonic()
    results = {}
    print(f"mutate: {len(chosen)} mutants, {a.jobs} at a time; each runs its stage's tests")
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futs = {pool.submit(run_one, m, py): m for m in chosen}
        for f in concurrent.futures.as_completed(futs):
            mid, verdict, detail, secs = f.result()
            results[mid] = (verdict, detail)
            m = futs[f]
            shown = verdict
            if verdict == "survived" and m.get("equivalent"):
                shown = "equivalent"
                detail = m["equivalent"]
            print(f"{shown:12} {mid:28} {secs:5.0f} s  {detail}", flush=True)
    total = time.monotonic() - t0
    killed = sum(1 for v, _ in results.values() if v == "killed")
    equiv = sum(1 for m in chosen if results[m["id"]][0] == "survived" and m.get("equivalent"))
    bad = [m["id"] for m in chosen
           if results[m["id"]][0] != "killed" and not (results[m["id"]][0] == "survived" and m.get("equivalent"))]
    print(f"\nmutate: {killed} killed, {equiv} equivalent, {len(bad)} not killed, of {len(chosen)}"
          f" ({100.0 * killed / max(1, len(chosen) - equiv):.0f}% of the non-equivalent killed)"
          f" in {total:.0f} s")
    if bad:
        print("mutate: not killed: " + " ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
