#!/usr/bin/env python3
"""ktls_06.py - stage 06 over HTTPS, the workers' record layer against kernel
TLS in the workers, under wrk. Run in the kTLS guest by `make bench-ktls`
(tests/ktls/inside.sh): the host kernel has no TLS.

    ktls_06.py [--rounds N (5)] [--seconds S (3)]

Each round runs both, in the order record layer then kernel (A B A B ...):
a fresh `handoff_server --serve --tls --workers 2 --ktls off|force`, wrk
with 1 thread and 8 keep-alive connections for S seconds, then SIGTERM.
Reported per round and as medians with their spread: requests per second,
and the server's CPU time (dispatcher and workers, user + system, from
/proc/PID/stat) per 1,000 requests. A ratio whose rounds fall on both sides
of 1.0 is called even. Not a lesson: measurement machinery.
"""

import argparse
import re
import select
import signal
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: its /proc reading and its ratios and verdicts)

ROOT = Path(__file__).resolve().parents[1]
PROG = ROOT / "06-prefork-server" / "handoff_server"
MODES = [("record layer", "off"), ("kernel TLS", "force")]


def one_run(ktls, seconds):
    """(requests per second, server CPU milliseconds per 1,000 requests)."""
    p = subprocess.Popen([str(PROG), "--serve", "--port", "0", "--workers", "2", "--tls",
                          "--ktls", ktls], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, start_new_session=True)
    try:
        if not select.select([p.stdout], [], [], 30)[0]:
            raise SystemExit("ktls_06: the server said nothing within 30 s")
        port = int(re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", p.stdout.readline()).group(1))
        before = run.tree_cpu(p.pid)
        out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "--timeout", "10s",
                              f"https://127.0.0.1:{port}/"], capture_output=True, text=True,
                             timeout=seconds + 60)
        cpu = run.tree_cpu(p.pid) - before
        if out.returncode != 0 or "Non-2xx" in out.stdout or "Socket errors" in out.stdout:
            raise SystemExit(f"ktls_06: wrk failed against --ktls {ktls}:\n"
                             f"{out.stdout}{out.stderr}")
        done = int(re.search(r"(\d+) requests in", out.stdout).group(1))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))
        return rps, 1e6 * cpu / done  # ms per 1,000 requests
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
        p.stdout.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    a = ap.parse_args()
    rec, ker = [], []
    for _ in range(a.rounds):
        for (_, ktls), into in zip(MODES, (rec, ker)):  # A B, A B, ...
            into.append(one_run(ktls, a.seconds))
    ratios = run.per_round([k[0] for k in ker], [r[0] for r in rec])
    cpu_ratios = run.per_round([k[1] for k in ker], [r[1] for r in rec])
    print(f"Stage 06 --tls, 2 workers, wrk -t1 -c8 keep-alive, {a.seconds} s a run, "
          f"{a.rounds} rounds (A B A B ...)\n")
    print("| round | record layer req/s | kernel TLS req/s | kernel / record "
          "| CPU ms/1k req: record | kernel |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, (r, k) in enumerate(zip(rec, ker), 1):
        print(f"| {i} | {r[0]:.0f} | {k[0]:.0f} | {k[0] / r[0]:.2f}× | {r[1]:.1f} | {k[1]:.1f} |")
    med = statistics.median
    print(f"| median | {med(x[0] for x in rec):.0f} | {med(x[0] for x in ker):.0f} "
          f"| {run.ratio(ratios)} | {med(x[1] for x in rec):.1f} | {med(x[1] for x in ker):.1f} |")
    says = {"even": "even (the rounds fall on both sides of 1.0)",
            "ahead": "kernel TLS ahead in every round", "behind": "record layer ahead in every round"}
    print(f"\nrequests/s, kernel / record: {run.ratio(ratios)}: {says[run.verdict(ratios)]}")
    print(f"CPU per request, kernel / record: {run.ratio(cpu_ratios)}: "
          f"{says[run.verdict(cpu_ratios, higher_is_better=False)]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
