#!/usr/bin/env python3
"""bench/run.py - what `make bench` runs: the designs of this repository
measured side by side, on this machine, in this run.

  1. descriptor passing: stage 03's fdpass at 1, 16, 64 and 253 descriptors
     per message (bench/fdpass_bench), Python's socket.send_fds/recv_fds as
     the baseline, pidfd_getfd(2) for comparison; the receiver closes each.
  2. the four server models of stage 06 under wrk: new connections per
     second (Connection: close), requests per second (keep-alive), p50/p99.
  3. TLS, against stage 05's server (05-ssl/ssl_handoff --serve): connections
     per second with `openssl s_time` for before- vs after-handshake handoff,
     and a 64 MiB echo through one connection: throughput and the server's CPU
     time, OpenSSL's SSL_read/SSL_write in the worker (before-handshake) vs
     stage 05's record layer (after-handshake), on one cipher suite.

Every figure is the median of BENCH_RUNS runs (default 3) and is printed
with its ratio to a baseline measured in the same run. The whole thing
takes about two minutes (BENCH_SECONDS=3 per wrk run). Writes
bench/RESULTS.md and prints it.
"""

import datetime
import os
import ssl
import threading
import platform
import re
import select
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
CONNS = int(os.environ.get("BENCH_CONNS", "50"))
FDPASS = ROOT / "bench" / "fdpass_bench"
SERVER = ROOT / "06-prefork-server" / "handoff_server"
MODELS = ["handoff", "fork-per-conn", "reuseport", "proxy"]
SSL05 = ROOT / "05-ssl" / "ssl_handoff"
TLS_SUITE = "TLS_AES_128_GCM_SHA256"
TLS_MODES = ["before-handshake", "after-handshake"]
HTTPS = "handoff --tls"  # stage 06 over HTTPS: handshake in the dispatcher, session handed off
NCPU = os.cpu_count() or 1
commands = []  # every command line run, for RESULTS.md


def rel(c):
    """A command word as the reader would type it, from the top of the repository."""
    c = str(c)
    return c[len(str(ROOT)) + 1 :] if c.startswith(str(ROOT) + "/") else c


def sh(cmd, timeout=120):
    commands.append(" ".join(shlex.quote(rel(c)) for c in cmd))
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def fdpass_rate(args):
    m = re.search(r"fds_per_s=(\d+)", sh([FDPASS, *args]))
    return float(m.group(1))


def python_rate(count=100000):
    """Python's socket.send_fds/recv_fds, the same shape as fdpass_bench: a
    sender process, one fd per message, the receiver closes each."""
    a, b = socket.socketpair()
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            a.close()
            for _ in range(count):
                socket.send_fds(b, [b"x"], [null])
            code = 0
        finally:
            os._exit(code)
    b.close()
    os.close(null)
    got = 0
    t0 = time.perf_counter()
    for _ in range(count):
        _, fds, _, _ = socket.recv_fds(a, 1, 1, socket.MSG_CMSG_CLOEXEC)
        for fd in fds:
            os.close(fd)
        got += len(fds)
    dt = time.perf_counter() - t0
    a.close()
    _, status = os.waitpid(pid, 0)
    if got != count or status != 0:
        sys.exit(f"bench: python baseline moved {got} of {count} (sender status {status})")
    return count / dt


def start_server(model, extra=()):
    cmd = [SERVER, "--serve", "--port", "0", "--model", model, "--workers", str(NCPU), *extra]
    commands.append(" ".join(map(rel, cmd)))
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        p.kill()
        p.wait()
        sys.exit(f"bench: {model}: first line {line!r}")
    return p, int(m.group(1))


def stop_server(p):
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    if p.returncode != 0:
        sys.exit(f"bench: server exited {p.returncode}: {err}")
    return out


def to_ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, close, scheme="http"):
    cmd = ["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = sh(cmd + [f"{scheme}://127.0.0.1:{port}/"], timeout=SECONDS + 60)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(
        (p, to_ms(v, u)) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    )
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(map(int, m.groups()))
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99"), "errors": errors}


def med(xs):
    return statistics.median(xs)


def fmt_rate(x):
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k"


def tree_cpu(pid):
    """CPU seconds (user + system) of pid and its children, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(rest[1]) == pid:
            total += int(rest[11]) + int(rest[12])  # utime, stime
    return total / tick


def start_ssl05(mode):
    cmd = [SSL05, "--serve", "--port", "0", "--mode", mode, "--workers", str(NCPU),
           "--ciphersuites", TLS_SUITE]
    commands.append(" ".join(map(rel, cmd)))
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline().strip()
    m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        p.kill()
        p.wait()
        raise RuntimeError(f"05-ssl {mode}: first line {line!r}")
    # the narration must not fill the pipe: drain it
    threading.Thread(target=p.stdout.read, daemon=True).start()
    return p, int(m.group(1))


def s_time(port):
    """openssl s_time: new TLS connections, one after the other; per wall second."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(SECONDS)]
    commands.append(" ".join(cmd).replace(str(port), "PORT"))
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 60)
    wall = time.perf_counter() - t0
    m = re.search(r"(\d+) connections in [\d.]+ real seconds", out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"s_time: {out.stdout[-300:]} {out.stderr[-300:]}")
    return int(m.group(1)) / wall


def tls_echo(port, server_pid, mib=64):
    """mib MiB of 8000-byte lines through one TLS connection and back.
    Returns (MiB/s, server CPU seconds per GiB)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed
    line = b"a" * 7999 + b"\n"
    n = mib * 1024 * 1024 // len(line)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60)) as s:
        s.sendall(b"warm up\n")
        s.recv(4096)  # the worker has the session now
        cpu0 = tree_cpu(server_pid)
        t0 = time.perf_counter()
        # One thread (an SSL object must not be read and written from two
        # threads at once), non-blocking, at most 1 MiB in flight.
        s.setblocking(False)
        data = memoryview(line * n)
        sent = got = 0
        deadline = time.monotonic() + 120
        while got < n:
            if time.monotonic() > deadline:
                raise RuntimeError("tls echo: no progress")
            can_send = sent < len(data) and sent - got * len(line) < 2**20
            r, w, _ = select.select([s], [s] if can_send else [], [], 30)
            if w:
                try:
                    sent += s.send(data[sent : sent + 65536])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
            if r:
                while True:
                    try:
                        chunk = s.recv(65536)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        break
                    if not chunk:
                        raise RuntimeError("tls echo: EOF")
                    got += chunk.count(b"\n")
                    if not s.pending():
                        break
        dt = time.perf_counter() - t0
        cpu = tree_cpu(server_pid) - cpu0
    gib = n * len(line) / 2**30
    return n * len(line) / 2**20 / dt, cpu / gib


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        m = re.search(r"MemTotal:\s+(\d+) kB", f.read())
        mem = f"{int(m.group(1)) / 1024 / 1024:.1f} GiB" if m else "?"
    wrk_v = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()
    return cpu, mem, (wrk_v[0] if wrk_v else "wrk ?")


def main():
    started = time.monotonic()
    print(f"bench: {RUNS} runs of everything; wrk {SECONDS} s per run, {CONNS} connections", flush=True)

    # ---- 1. descriptor passing -------------------------------------------------
    fd_runs = {k: [] for k in ("py", "1", "16", "64", "253", "pidfd")}
    for r in range(RUNS):
        fd_runs["py"].append(python_rate())
        for k in ("1", "16", "64", "253"):
            fd_runs[k].append(fdpass_rate(["fdpass", k, "200000" if k == "1" else "400000"]))
        fd_runs["pidfd"].append(fdpass_rate(["pidfd", "400000"]))
        print(f"bench: descriptor passing, run {r + 1}/{RUNS} done", flush=True)
    commands.append("python3 bench/run.py (socket.send_fds / socket.recv_fds, 100000 fds, 1 per message)")
    fd = {k: med(v) for k, v in fd_runs.items()}

    # ---- 2. the four models under wrk ---------------------------------------------
    mruns = {(m, c): [] for m in MODELS + [HTTPS] for c in (True, False)}
    for r in range(RUNS):
        for m in MODELS + [HTTPS]:  # interleaved, so a slow moment does not hit one model only
            p, port = start_server("handoff", ["--tls"]) if m == HTTPS else start_server(m)
            scheme = "https" if m == HTTPS else "http"
            try:
                mruns[(m, True)].append(wrk(port, True, scheme))
                mruns[(m, False)].append(wrk(port, False, scheme))
            finally:
                stop_server(p)
        print(f"bench: server models, run {r + 1}/{RUNS} done", flush=True)

    # ---- 3. TLS, stage 05's server -----------------------------------------------------
    # s_time and the echo are measured (and may fail) separately: a failure
    # of one does not void the other, and is reported instead of a figure.
    tls_runs = {m: {"cps": [], "mibs": [], "cpu": []} for m in TLS_MODES}
    tls_fail = {}  # "cps" / "echo" -> why
    if not SSL05.exists():
        tls_fail = {"cps": "05-ssl/ssl_handoff is not built", "echo": "05-ssl/ssl_handoff is not built"}
    for r in range(RUNS if not tls_fail else 0):
        for mode in TLS_MODES:
            try:
                p, port = start_ssl05(mode)
            except (RuntimeError, OSError) as e:
                tls_fail.setdefault("cps", f"{mode}: {e}")
                tls_fail.setdefault("echo", f"{mode}: {e}")
                continue
            try:
                if "cps" not in tls_fail:
                    try:
                        tls_runs[mode]["cps"].append(s_time(port))
                    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                        tls_fail["cps"] = f"{mode}: {e}"
                if "echo" not in tls_fail:
                    try:
                        mibs, cpu = tls_echo(port, p.pid)
                        tls_runs[mode]["mibs"].append(mibs)
                        tls_runs[mode]["cpu"].append(cpu)
                    except (RuntimeError, OSError) as e:
                        tls_fail["echo"] = f"{mode}: {e}"
            finally:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        print(f"bench: TLS, run {r + 1}/{RUNS} done", flush=True)
    commands.append(f"python3 bench/run.py (ssl module client: 64 MiB of 8000-byte lines echoed, {TLS_SUITE})")

    def mmed(m, close, key):
        vals = [x[key] for x in mruns[(m, close)] if x[key] is not None]
        return med(vals) if vals else float("nan")

    errors = {m: sum(x["errors"] for c in (True, False) for x in mruns[(m, c)]) for m in MODELS + [HTTPS]}

    # ---- RESULTS.md ------------------------------------------------------------------------
    cpu, mem, wrk_v = machine()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L = []
    L.append("# Benchmark results\n")
    L.append(f"Written by `make bench` (bench/run.py) on {now}. Every figure is the median of {RUNS} runs; ")
    L.append("every ratio compares two figures measured in this same run on this same machine. ")
    L.append("Absolute numbers depend on the machine; the ratios are what to read.\n")
    L.append("| | |\n|---|---|")
    L.append(f"| machine | {cpu}, {NCPU} cores online, {mem} |")
    L.append(f"| kernel | {platform.system()} {platform.release()} ({platform.machine()}) |")
    L.append(f"| python | {platform.python_version()} |")
    L.append(f"| load generator | {wrk_v}: 2 threads, {CONNS} connections, {SECONDS} s per run, on the same cores as the server |")
    L.append("")

    L.append("## 1. Passing descriptors over a socketpair, receiver closing each\n")
    L.append("| method | descriptors/s | × Python send_fds | × fdpass at 1/msg |")
    L.append("|---|---:|---:|---:|")
    rows = [("Python `socket.send_fds`/`recv_fds`, 1 per message (baseline)", "py")]
    rows += [(f"fdpass, {k} per message", k) for k in ("1", "16", "64", "253")]
    rows += [("`pidfd_getfd(2)` + close (no socket)", "pidfd")]
    for label, k in rows:
        L.append(f"| {label} | {fmt_rate(fd[k])} | {fd[k] / fd['py']:.2f}× | {fd[k] / fd['1']:.2f}× |")
    L.append("")

    L.append(f"## 2. The server models (stage 06), {NCPU} workers, same responder\n")
    L.append("New connections per second: every request on a new connection (`Connection: close`). "
             "Keep-alive: every connection reused.\n")
    L.append("| model | new conn/s | × fork-per-conn | × reuseport | p50 / p99 ms | keep-alive req/s | × reuseport | p50 / p99 ms | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    fk, ru = mmed("fork-per-conn", True, "rps"), mmed("reuseport", True, "rps")
    ru_ka = mmed("reuseport", False, "rps")
    for m in MODELS:
        c, ka = mmed(m, True, "rps"), mmed(m, False, "rps")
        L.append(
            f"| {m} | {c:,.0f} | {c / fk:.2f}× | {c / ru:.2f}× | {mmed(m, True, 'p50'):.2f} / {mmed(m, True, 'p99'):.2f} "
            f"| {ka:,.0f} | {ka / ru_ka:.2f}× | {mmed(m, False, 'p50'):.2f} / {mmed(m, False, 'p99'):.2f} | {errors[m]} |"
        )
    L.append("")

    L.append(f"### HTTPS: `handoff --tls` (stage 05's after-handshake handoff inside stage 06), {NCPU} workers\n")
    L.append("The dispatcher runs every TLS 1.3 handshake (non-blocking, in its epoll loop), then hands the "
             "descriptor and the session state to a worker, which runs stage 05's record layer. "
             "wrk over HTTPS (OpenSSL's default suite); the ratio is to plain `handoff` in this run.\n")
    L.append("| | new conn/s | × handoff (HTTP) | p50 / p99 ms | keep-alive req/s | × handoff (HTTP) | p50 / p99 ms | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    hc, hka = mmed("handoff", True, "rps"), mmed("handoff", False, "rps")
    tc, tka = mmed(HTTPS, True, "rps"), mmed(HTTPS, False, "rps")
    L.append(f"| {HTTPS} | {tc:,.0f} | {tc / hc:.2f}× | {mmed(HTTPS, True, 'p50'):.2f} / {mmed(HTTPS, True, 'p99'):.2f} "
             f"| {tka:,.0f} | {tka / hka:.2f}× | {mmed(HTTPS, False, 'p50'):.2f} / {mmed(HTTPS, False, 'p99'):.2f} | {errors[HTTPS]} |")
    L.append("")

    L.append(f"## 3. TLS handoff (stage 05's server, {NCPU} workers, {TLS_SUITE})\n")
    L.append("Connections per second: `openssl s_time -new` (one connection at a time, full handshake each). "
             "Echo: one connection, 64 MiB of 8000-byte lines sent and echoed back (upper-cased) by the worker, "
             "at most 1 MiB in flight; server CPU = user + system time of the server and its workers during the echo.\n")
    L.append("| | before-handshake (worker runs OpenSSL) | after-handshake (stage 05 record layer) | after / before |")
    L.append("|---|---:|---:|---:|")
    t = {m: {k: (med(v) if v else None) for k, v in tls_runs[m].items()} for m in TLS_MODES}
    b, a = t["before-handshake"], t["after-handshake"]
    rows = [("new connections/s (s_time)", "cps", "cps", "{:,.0f}"),
            ("echo throughput, MiB/s", "mibs", "echo", "{:,.0f}"),
            ("server CPU seconds per GiB echoed", "cpu", "echo", "{:.2f}")]
    for label, key, kind, f in rows:
        if kind in tls_fail:
            L.append(f"| {label} | not measured | not measured | {tls_fail[kind]} |")
        else:
            L.append(f"| {label} | {f.format(b[key])} | {f.format(a[key])} | {a[key] / b[key]:.2f}× |")
    L.append("")

    L.append("## Targets (from the issue)\n")
    L.append("| target | measured | |")
    L.append("|---|---:|---|")
    targets = [
        ("fdpass at 1/msg ≥ 2.5× Python send_fds", fd["1"] / fd["py"], 2.5),
        ("fdpass at 64/msg ≥ 5× its own 1/msg rate", fd["64"] / fd["1"], 5.0),
        ("handoff ≥ 3× fork-per-conn, new conn/s", mmed("handoff", True, "rps") / fk, 3.0),
        ("handoff ≥ 0.6× reuseport, new conn/s", mmed("handoff", True, "rps") / ru, 0.6),
    ]
    for label, got, want in targets:
        L.append(f"| {label} | {got:.2f}× | {'met' if got >= want else 'MISSED'} |")
    if "echo" in tls_fail:
        L.append("| record layer at no more server CPU than OpenSSL | - | not measured (see section 3) |")
    else:
        ratio = a["cpu"] / b["cpu"]
        L.append(f"| record layer at no more server CPU than OpenSSL (≤ 1×) | {ratio:.2f}× | {'met' if ratio <= 1 else 'MISSED'} |")
    L.append("")

    L.append("## Every run\n")
    L.append("```")
    for k, v in fd_runs.items():
        L.append(f"fd passing {k:>6}: " + "  ".join(f"{x:,.0f}" for x in v))
    for m, v in tls_runs.items():
        L.append(f"TLS {m:>16}: conn/s " + "  ".join(f"{x:,.0f}" for x in v["cps"]) + "; MiB/s "
                 + "  ".join(f"{x:,.0f}" for x in v["mibs"]) + "; CPU s/GiB " + "  ".join(f"{x:.2f}" for x in v["cpu"]))
    for (m, c), v in mruns.items():
        L.append(f"{m:>13} {'close' if c else 'keep-alive':>10}: " + "  ".join(
            f"{x['rps']:,.0f}/s p50 {x['p50']:.3g}ms p99 {x['p99']:.3g}ms err {x['errors']}" for x in v))
    L.append("```\n")
    L.append("## Commands\n")
    L.append("```")
    seen = []
    for c in commands:
        c = re.sub(r"http://127\.0\.0\.1:\d+/", "http://127.0.0.1:PORT/", c)
        if c not in seen:
            seen.append(c)
    L.extend(seen)
    L.append("```")
    L.append(f"\nTotal time: {time.monotonic() - started:.0f} s.")
    text = "\n".join(L) + "\n"
    (ROOT / "bench" / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
