#!/usr/bin/env python3
"""bench/run.py - what `make bench` runs: the designs of this repository
measured side by side, and against nginx, on this machine, in this run.

  1. descriptor passing: stage 03's fdpass at 1, 16, 64 and 253 descriptors
     per message (bench/fdpass_bench), Python's socket.send_fds/recv_fds as
     the baseline, pidfd_getfd(2) for comparison, and a bare sendmsg/recvmsg
     loop (`fdpass_bench floor K`, when built) as the floor; the receiver
     closes each.
  2. the four server models of stage 06, `handoff --tls`, and nginx over
     HTTP and HTTPS (bench/nginx.conf.in: the same workers, body and TLS)
     under wrk: new connections per second (Connection: close), requests
     per second (keep-alive), p50/p99.
  3. TLS, against stage 05's server (05-ssl/ssl_handoff --serve): connections
     per second with `openssl s_time` for before- vs after-handshake handoff,
     and a 64 MiB echo through one connection: throughput and the server's CPU
     time, OpenSSL's SSL_read/SSL_write in the worker (before-handshake) vs
     stage 05's record layer (after-handshake), on one cipher suite.
  4. stage 07's own measurement (07-hot-restart/measure.py --markdown), when
     that stage is there.

Everything is measured in BENCH_RUNS rounds (default 5), interleaved: every
server once per round, one after the other, so that a slow moment hits them
all alike. Every figure is the median over the rounds with the spread
(smallest-largest); every ratio is computed round by round (a/b in round 1,
in round 2, ...) and given as the median with its spread. A comparison whose
spread crosses 1.0 is called even. About five minutes (BENCH_SECONDS=3 per
wrk run). Every server is stopped and every temporary directory removed on
every path. Writes bench/RESULTS.md and prints it.
"""

import datetime
import os
import platform
import re
import select
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import shutil
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
CONNS = int(os.environ.get("BENCH_CONNS", "50"))
FDPASS = ROOT / "bench" / "fdpass_bench"
SERVER = ROOT / "06-prefork-server" / "handoff_server"
MODELS = ["handoff", "fork-per-conn", "reuseport", "proxy"]
SSL05 = ROOT / "05-ssl" / "ssl_handoff"
TLS_SUITE = "TLS_AES_128_GCM_SHA256"
TLS_MODES = ["before-handshake", "after-handshake"]
HTTPS = "handoff --tls"  # stage 06 over HTTPS: handshake in the dispatcher, session handed off
NGINX, NGINXS = "nginx", "nginx (HTTPS)"
NGINX_CONF = ROOT / "bench" / "nginx.conf.in"
# Debian puts nginx in /usr/sbin, which is not on every user's PATH.
NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"
# One round: every server once, in this order (nginx next to handoff).
SERVERS = [NGINX, *MODELS, NGINXS, HTTPS]
SCHEME = {NGINXS: "https", HTTPS: "https"}
MEASURE07 = ROOT / "07-hot-restart" / "measure.py"
NCPU = os.cpu_count() or 1
WAIT = 15  # seconds: the bound on any server's start or stop
commands = []  # every command line run, for RESULTS.md


def wrap_command(cmd, width):
    """A command as lines of at most `width` columns, continued with ' \\'."""
    lines, cur = [], ""
    for word in cmd.split(" "):
        if cur and len(cur) + 1 + len(word) > width - 2:
            lines.append(cur + " \\")
            cur = "    " + word
        else:
            cur = f"{cur} {word}" if cur else word
    lines.append(cur)
    return lines
live = []  # every server process this run started and has not yet reaped


def rel(c):
    """A command word as the reader would type it, from the top of the repository."""
    c = str(c)
    return c[len(str(ROOT)) + 1 :] if c.startswith(str(ROOT) + "/") else c


def note(cmd):
    commands.append(" ".join(shlex.quote(rel(c)) for c in cmd))


def sh(cmd, timeout=120):
    note(cmd)
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


# ---- servers: started in their own process group, always stopped ----------


def spawn(cmd, **kw):
    """Starts cmd in a new session (so that its workers can be killed with
    it if it will not stop) and remembers it until stop()."""
    note(cmd)
    p = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **kw)
    live.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    """Signals p and waits, bounded; past the bound its whole process group
    is killed. Returns its exit status (None if it had to be killed)."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        rc = p.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        rc = None
    # Past the bound, or workers left behind by a master that died first:
    # the whole group goes.
    if rc is None or in_group(p.pid):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if rc is None:
        p.wait()
    for t in getattr(p, "drains", []):
        t.join(WAIT)  # EOF on its pipe comes with the last process holding it
    for f in (p.stdout, p.stderr):
        if f:
            f.close()
    live.remove(p)
    return rc


def drain(p, *files):
    """Reads what p prints, so that a full pipe never blocks it."""
    p.drains = [threading.Thread(target=f.read, daemon=True) for f in files]
    for t in p.drains:
        t.start()


def first_line(p):
    """The first line p prints, or why there is none, within WAIT seconds."""
    fd, buf = p.stdout.fileno(), b""
    deadline = time.monotonic() + WAIT
    while b"\n" not in buf:
        r, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not r:
            return buf.decode(errors="replace") + " (timed out)"
        chunk = os.read(fd, 1)  # byte by byte: what follows stays in the pipe
        if not chunk:
            return buf.decode(errors="replace") + " (EOF)"
        buf += chunk
    return buf.decode().rstrip("\n")


def fdpass_rate(args):
    m = re.search(r"fds_per_s=(\d+)", sh([FDPASS, *args]))
    return float(m.group(1))


def floor_available():
    """Does this fdpass_bench have the bare sendmsg/recvmsg loop?"""
    try:
        out = subprocess.run([str(FDPASS), "floor", "1", "1000"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and re.search(r"fds_per_s=\d+", out.stdout) is not None


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
    p = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    line = first_line(p)
    m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        stop(p, signal.SIGKILL)
        sys.exit(f"bench: {model}: first line {line!r}")
    drain(p, p.stdout, p.stderr)
    return p, int(m.group(1))


def stop_server(p):
    rc = stop(p)
    if rc != 0:
        sys.exit(f"bench: server exited {rc} after SIGTERM")


# ---- nginx, configured to answer like stage 06 -----------------------------


def free_ports(n):
    """n ports that are free on 127.0.0.1 right now (the kernel's choice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def nginx_prepare(d, workers, http_port, https_port):
    """Writes into directory d a P-256 certificate for localhost (the key
    type stage 05's tlsx_make_identity makes) unless one is there, and
    nginx.conf from bench/nginx.conf.in. Returns nginx's command line."""
    d = Path(d)
    if not (d / "cert.pem").exists():
        sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", d / "key.pem", "-out", d / "cert.pem", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], timeout=30)
    conf = NGINX_CONF.read_text()
    for k, v in {"DIR": d, "WORKERS": workers, "HTTP_PORT": http_port, "HTTPS_PORT": https_port}.items():
        conf = conf.replace(f"@{k}@", str(v))
    (d / "nginx.conf").write_text(conf)
    commands.append(f"(DIR/nginx.conf: bench/nginx.conf.in with @DIR@, @WORKERS@ = {workers} and two ports filled in)")
    return [NGINX_BIN, "-p", d, "-c", d / "nginx.conf", "-e", d / "error.log", "-g", "daemon off;"]


def http_get(port):
    """One GET over a new connection: the status line and body, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data
    except OSError:
        return None


def start_nginx(d):
    """nginx in the foreground on two fresh ports, ready: its workers are
    all there and it has answered one request. Returns (proc, http, https)."""
    for _ in range(3):  # a port taken between free_ports() and nginx's bind: again
        http_port, https_port = free_ports(2)
        cmd = nginx_prepare(d, NCPU, http_port, https_port)
        p = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + WAIT
        while p.poll() is None and time.monotonic() < deadline:
            reply = http_get(http_port)
            if len(children(p.pid)) == NCPU and reply and reply.startswith(b"HTTP/1.1 200"):
                if not re.search(rb"\r\n\r\nserved by worker \d+$", reply):
                    stop(p)
                    sys.exit(f"bench: nginx answered {reply!r}")
                return p, http_port, https_port
            time.sleep(0.02)  # a bounded poll: nginx says nothing when it is ready
        err = p.stderr.read().decode(errors="replace") if p.poll() is not None else "(still starting)"
        stop(p, signal.SIGKILL)
        if "Address already in use" not in err:
            break
    log = (Path(d) / "error.log").read_text(errors="replace")[-500:] if (Path(d) / "error.log").exists() else ""
    sys.exit(f"bench: nginx did not become ready within {WAIT} s: {err.strip()} {log.strip()}")


def nginx_version():
    try:
        out = subprocess.run([NGINX_BIN, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "nginx ?"
    return out.stderr.strip().replace("nginx version: ", "")


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
    nan = float("nan")
    return {"rps": rps, "p50": lat.get("50", nan), "p99": lat.get("99", nan), "errors": errors}


# ---- statistics: medians, spreads, per-round ratios ------------------------


def med(xs):
    return statistics.median(xs)


def fmt_rate(x):
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k"


def spread(xs, f="{:,.0f}"):
    """'median (min-max)' of the rounds."""
    return f"{f.format(med(xs))} ({f.format(min(xs))}–{f.format(max(xs))})"


def per_round(a, b):
    """a/b round by round: both were measured minutes apart at most."""
    return [x / y if y else float("nan") for x, y in zip(a, b)]


def ratio(rs):
    if any(x != x for x in rs):  # NaN: a round where the baseline was 0
        return "-"
    return f"{med(rs):.2f}× ({min(rs):.2f}–{max(rs):.2f})"


def verdict(rs, higher_is_better=True):
    """'even' when the rounds disagree on which side of 1.0 the ratio is."""
    if any(x != x for x in rs):
        return "-"
    if min(rs) <= 1.0 <= max(rs):
        return "even"
    return "ahead" if (med(rs) > 1.0) == higher_is_better else "behind"


def processes():
    """(pid, ppid, pgrp, utime + stime in ticks) of every process, from /proc."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)"
            yield int(entry), int(rest[1]), int(rest[2]), int(rest[11]) + int(rest[12])
        except (OSError, ValueError, IndexError):
            continue  # not a process, or gone meanwhile


def children(pid):
    """The pids whose parent is pid."""
    return [c for c, ppid, _, _ in processes() if ppid == pid]


def in_group(pgid):
    """Is any process left in process group pgid?"""
    return any(g == pgid for _, _, g, _ in processes())


def tree_cpu(pid):
    """CPU seconds (user + system) of pid and its children, from /proc."""
    return sum(t for c, ppid, _, t in processes() if pid in (c, ppid)) / os.sysconf("SC_CLK_TCK")


def start_ssl05(mode):
    cmd = [SSL05, "--serve", "--port", "0", "--mode", mode, "--workers", str(NCPU),
           "--ciphersuites", TLS_SUITE]
    p = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = first_line(p)
    m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        stop(p, signal.SIGKILL)
        raise RuntimeError(f"05-ssl {mode}: first line {line!r}")
    drain(p, p.stdout)
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
    wrk_v = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    ossl = subprocess.run(["openssl", "version"], capture_output=True, text=True, timeout=10).stdout.strip()
    return cpu, mem, (wrk_v[0] if wrk_v else "wrk ?"), ossl


def load():
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def measure07():
    """Stage 07's own table, or one line saying why there is none."""
    if not MEASURE07.exists():
        return None, "stage 07: not measured (07-hot-restart/measure.py is not in this tree)"
    cmd = [sys.executable, MEASURE07, "--markdown"]
    note(["python3", *cmd[1:]])
    try:
        out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=180, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, "stage 07: measure.py did not finish within 180 s"
    if out.returncode != 0:
        return None, f"stage 07: measure.py exited {out.returncode}: {out.stderr.strip()[-300:]}"
    return out.stdout.strip(), None


def main():
    started = time.monotonic()
    load0 = load()
    print(f"bench: {RUNS} rounds of everything; wrk {SECONDS} s per run, {CONNS} connections; "
          f"load average {load0}", flush=True)

    # ---- 1. descriptor passing ---------------------------------------------
    has_floor = floor_available()
    if not has_floor:
        print("floor: not available (bench/fdpass_bench has no floor mode)", flush=True)
    keys = ["py", "1", "16", "64", "253", "pidfd"] + (["floor1", "floor64"] if has_floor else [])
    fd_runs = {k: [] for k in keys}
    for r in range(RUNS):
        fd_runs["py"].append(python_rate())
        for k in ("1", "16", "64", "253"):
            count = "200000" if k == "1" else "400000"
            fd_runs[k].append(fdpass_rate(["fdpass", k, count]))
            if has_floor and k in ("1", "64"):  # right after fdpass, same count
                fd_runs["floor" + k].append(fdpass_rate(["floor", k, count]))
        fd_runs["pidfd"].append(fdpass_rate(["pidfd", "400000"]))
        print(f"bench: descriptor passing, round {r + 1}/{RUNS} done", flush=True)
    commands.append("python3 bench/run.py (socket.send_fds / socket.recv_fds, 100000 fds, 1 per message)")
    fd = {k: med(v) for k, v in fd_runs.items()}

    # ---- 2. the server models and nginx under wrk ------------------------------
    mruns = {(m, c): [] for m in SERVERS for c in (True, False)}
    nginx_log = ""
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as d:
        for r in range(RUNS):
            for m in SERVERS:  # interleaved, so a slow moment does not hit one server only
                if m in (NGINX, NGINXS):
                    p, http_port, https_port = start_nginx(d)
                    port = https_port if m == NGINXS else http_port
                else:
                    p, port = start_server("handoff", ["--tls"]) if m == HTTPS else start_server(m)
                try:
                    mruns[(m, True)].append(wrk(port, True, SCHEME.get(m, "http")))
                    mruns[(m, False)].append(wrk(port, False, SCHEME.get(m, "http")))
                finally:
                    stop_server(p)
            print(f"bench: servers, round {r + 1}/{RUNS} done", flush=True)
        log = Path(d) / "error.log"
        if log.exists():
            nginx_log = "\n".join(l for l in log.read_text(errors="replace").splitlines()
                                  if re.search(r"\[(emerg|alert|crit|error)\]", l))

    # ---- 3. TLS, stage 05's server -------------------------------------------------
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
                stop(p)
        print(f"bench: TLS, round {r + 1}/{RUNS} done", flush=True)
    commands.append(f"python3 bench/run.py (ssl module client: 64 MiB of 8000-byte lines echoed, {TLS_SUITE})")

    # ---- 4. stage 07 ----------------------------------------------------------------
    table07, why07 = measure07()
    if why07:
        print(why07, flush=True)
    load1 = load()

    def v(m, close, key):
        return [x[key] for x in mruns[(m, close)]]

    def rate(m, close):
        return v(m, close, "rps")

    errors = {m: sum(x["errors"] for c in (True, False) for x in mruns[(m, c)]) for m in SERVERS}

    def lat(m, close):
        return f"{med(v(m, close, 'p50')):.2f} / {med(v(m, close, 'p99')):.2f}"

    # ---- RESULTS.md ------------------------------------------------------------------
    cpu, mem, wrk_v, ossl = machine()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L = []
    L.append("# Benchmark results\n")
    L.append(f"Written by `make bench` (bench/run.py) on {now}. Everything was measured in {RUNS} rounds, "
             "every server once per round, one after the other; a figure is the median over the rounds, "
             "with the smallest and largest round in brackets. A ratio is computed round by round "
             "(both sides measured minutes apart at most) and given the same way; when its rounds fall "
             "on both sides of 1.0 the comparison is called **even**. Absolute numbers depend on the "
             "machine; the ratios are what to read.\n")
    L.append("| | |\n|---|---|")
    L.append(f"| machine | {cpu}, {NCPU} cores online, {mem} |")
    L.append(f"| kernel | {platform.system()} {platform.release()} ({platform.machine()}) |")
    L.append(f"| other load | load average (1 / 5 / 15 min) {load0} at the start, {load1} at the end |")
    L.append(f"| software | python {platform.python_version()}, {nginx_version()}, {ossl} |")
    L.append(f"| load generator | {wrk_v}: 2 threads, {CONNS} connections, {SECONDS} s per run, "
             "on the same cores as the server |")
    L.append("")

    L.append("## 1. Passing descriptors over a socketpair, receiver closing each\n")
    L.append("| method | descriptors/s | × Python send_fds | × fdpass at 1/msg |")
    L.append("|---|---:|---:|---:|")
    rows = [("Python `socket.send_fds`/`recv_fds`, 1 per message (baseline)", "py")]
    rows += [(f"fdpass, {k} per message", k) for k in ("1", "16", "64", "253")]
    rows += [("`pidfd_getfd(2)` + close (no socket)", "pidfd")]
    for label, k in rows:
        L.append(f"| {label} | {fmt_rate(fd[k])} | {ratio(per_round(fd_runs[k], fd_runs['py']))} "
                 f"| {ratio(per_round(fd_runs[k], fd_runs['1']))} |")
    L.append("")
    L.append("### fdpass against the floor: a bare `sendmsg`/`recvmsg` loop\n")
    if has_floor:
        L.append("The floor (`bench/fdpass_bench floor K`) moves the same descriptors with nothing but "
                 "`sendmsg`, `recvmsg` and `close`: what fdpass adds on top of it is its checks "
                 "(MSG_CTRUNC, lengths, every descriptor accounted for).\n")
        L.append("| descriptors per message | fdpass, descriptors/s | floor, descriptors/s | fdpass / floor |")
        L.append("|---:|---:|---:|---:|")
        for k in ("1", "64"):
            L.append(f"| {k} | {spread(fd_runs[k])} | {spread(fd_runs['floor' + k])} "
                     f"| {ratio(per_round(fd_runs[k], fd_runs['floor' + k]))} |")
    else:
        L.append("floor: not available (this bench/fdpass_bench has no `floor` mode).")
    L.append("")

    L.append(f"## 2. The server models (stage 06) and nginx, {NCPU} workers each, same response\n")
    L.append("New connections per second: every request on a new connection (`Connection: close`). "
             "Keep-alive: every connection reused. nginx is set up by bench/nginx.conf.in to answer "
             "the same body with as many workers, SO_REUSEPORT listeners, no access log "
             "(bench/README.md).\n")
    L.append("| server | new conn/s | × fork-per-conn | × reuseport | × nginx | p50 / p99 ms "
             "| keep-alive req/s | × reuseport | × nginx | p50 / p99 ms | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in [NGINX, *MODELS]:
        c, ka = rate(m, True), rate(m, False)
        L.append(
            f"| {m} | {spread(c)} | {ratio(per_round(c, rate('fork-per-conn', True)))} "
            f"| {ratio(per_round(c, rate('reuseport', True)))} | {ratio(per_round(c, rate(NGINX, True)))} "
            f"| {lat(m, True)} | {spread(ka)} | {ratio(per_round(ka, rate('reuseport', False)))} "
            f"| {ratio(per_round(ka, rate(NGINX, False)))} | {lat(m, False)} | {errors[m]} |"
        )
    L.append("")

    L.append(f"### HTTPS: `handoff --tls` (stage 05's after-handshake handoff inside stage 06) and nginx\n")
    L.append("The dispatcher runs every TLS 1.3 handshake (non-blocking, in its epoll loop), then hands the "
             "descriptor and the session state to a worker, which runs stage 05's record layer. nginx "
             "runs handshake and records in the worker that accepted. Both: TLS 1.3 only, OpenSSL's "
             "default suites (wrk negotiates TLS_AES_256_GCM_SHA384), a P-256 certificate, two session "
             "tickets. × handoff (HTTP) compares with plain `handoff` in the same round.\n")
    L.append("| server | new conn/s | × handoff (HTTP) | × nginx (HTTPS) | p50 / p99 ms "
             "| keep-alive req/s | × handoff (HTTP) | × nginx (HTTPS) | p50 / p99 ms | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in (NGINXS, HTTPS):
        c, ka = rate(m, True), rate(m, False)
        L.append(
            f"| {m} | {spread(c)} | {ratio(per_round(c, rate('handoff', True)))} "
            f"| {ratio(per_round(c, rate(NGINXS, True)))} | {lat(m, True)} | {spread(ka)} "
            f"| {ratio(per_round(ka, rate('handoff', False)))} | {ratio(per_round(ka, rate(NGINXS, False)))} "
            f"| {lat(m, False)} | {errors[m]} |"
        )
    L.append("")

    L.append("### Against nginx, figure by figure\n")
    L.append("Each ratio is ours / nginx's, round by round. For rates higher is better, for latencies "
             "lower is better; **even** means the rounds disagree.\n")
    L.append("| | ours | nginx | ours / nginx | |")
    L.append("|---|---:|---:|---:|---|")
    for ours, theirs in (("handoff", NGINX), (HTTPS, NGINXS)):
        L.append(f"| **{ours}** vs **{theirs}** | | | | |")
        for label, close, key, f in (("new conn/s", True, "rps", "{:,.0f}"),
                                     ("keep-alive req/s", False, "rps", "{:,.0f}"),
                                     ("p50 ms, new conn", True, "p50", "{:.2f}"),
                                     ("p99 ms, new conn", True, "p99", "{:.2f}"),
                                     ("p50 ms, keep-alive", False, "p50", "{:.2f}"),
                                     ("p99 ms, keep-alive", False, "p99", "{:.2f}")):
            a, b = v(ours, close, key), v(theirs, close, key)
            rs = per_round(a, b)
            L.append(f"| {label} | {spread(a, f)} | {spread(b, f)} | {ratio(rs)} | {verdict(rs, key == 'rps')} |")
        L.append(f"| errors (all rounds) | {errors[ours]} | {errors[theirs]} | | |")
    if nginx_log:
        L.append(f"\nnginx's error log had {len(nginx_log.splitlines())} line(s) at level error or above:\n")
        L.append("```\n" + nginx_log[-2000:] + "\n```")
    L.append("")

    L.append(f"## 3. TLS handoff (stage 05's server, {NCPU} workers, {TLS_SUITE})\n")
    L.append("Connections per second: `openssl s_time -new` (one connection at a time, full handshake each). "
             "Echo: one connection, 64 MiB of 8000-byte lines sent and echoed back (upper-cased) by the worker, "
             "at most 1 MiB in flight; server CPU = user + system time of the server and its workers during the echo.\n")
    L.append("| | before-handshake (worker runs OpenSSL) | after-handshake (stage 05 record layer) | after / before |")
    L.append("|---|---:|---:|---:|")
    rows = [("new connections/s (s_time)", "cps", "cps", "{:,.0f}"),
            ("echo throughput, MiB/s", "mibs", "echo", "{:,.0f}"),
            ("server CPU seconds per GiB echoed", "cpu", "echo", "{:.2f}")]
    b, a = tls_runs["before-handshake"], tls_runs["after-handshake"]
    for label, key, kind, f in rows:
        if kind in tls_fail:
            L.append(f"| {label} | not measured | not measured | {tls_fail[kind]} |")
        else:
            L.append(f"| {label} | {spread(b[key], f)} | {spread(a[key], f)} | {ratio(per_round(a[key], b[key]))} |")
    L.append("")

    L.append("## 4. Hot restart (stage 07)\n")
    L.append(table07 if table07 else why07)
    L.append("")

    L.append("## What the designs should reach\n")
    L.append("Each line: the median of the per-round ratios, its spread, and whether it reaches the bar: "
             "**even** when the rounds fall on both sides of the bar (no claim either way), met or MISSED "
             "only when every round agrees with the median.\n")
    L.append("| the design should reach | median | rounds | |")
    L.append("|---|---:|---:|---|")
    checks = [
        ("fdpass at 1/msg ≥ 2.5× Python send_fds", per_round(fd_runs["1"], fd_runs["py"]), 2.5),
        ("fdpass at 64/msg ≥ 5× its own 1/msg rate", per_round(fd_runs["64"], fd_runs["1"]), 5.0),
        ("handoff ≥ 3× fork-per-conn, new conn/s", per_round(rate("handoff", True), rate("fork-per-conn", True)), 3.0),
        ("handoff ≥ 0.6× reuseport, new conn/s", per_round(rate("handoff", True), rate("reuseport", True)), 0.6),
        ("handoff ≥ 1× nginx, new conn/s", per_round(rate("handoff", True), rate(NGINX, True)), 1.0),
        ("handoff ≥ 1× nginx, keep-alive req/s", per_round(rate("handoff", False), rate(NGINX, False)), 1.0),
        ("handoff --tls ≥ 1× nginx (HTTPS), new conn/s", per_round(rate(HTTPS, True), rate(NGINXS, True)), 1.0),
        ("handoff --tls ≥ 1× nginx (HTTPS), keep-alive req/s", per_round(rate(HTTPS, False), rate(NGINXS, False)), 1.0),
    ]
    for label, rs, want in checks:
        mark = "met" if med(rs) >= want else "MISSED"
        if min(rs) < want <= max(rs):
            mark = f"**even** ({mark.lower()} by the median)"
        L.append(f"| {label} | {med(rs):.2f}× | {min(rs):.2f}–{max(rs):.2f} | {mark} |")
    if "echo" in tls_fail:
        L.append("| record layer at no more server CPU than OpenSSL | - | - | not measured (see section 3) |")
    else:
        rs = per_round(a["cpu"], b["cpu"])
        mark = "met" if med(rs) <= 1 else "MISSED"
        if min(rs) <= 1 < max(rs):
            mark = f"**even** ({mark.lower()} by the median)"
        L.append(f"| record layer at no more server CPU than OpenSSL (≤ 1×) | {med(rs):.2f}× "
                 f"| {min(rs):.2f}–{max(rs):.2f} | {mark} |")
    L.append("")

    L.append("## Every round\n")
    L.append("```")
    for k, xs in fd_runs.items():
        L.append(f"fd passing {k:>7}: " + "  ".join(f"{x:,.0f}" for x in xs))
    for m, t in tls_runs.items():
        L.append(f"TLS {m}:")
        L.append("    conn/s     " + "  ".join(f"{x:,.0f}" for x in t["cps"]))
        L.append("    MiB/s      " + "  ".join(f"{x:,.0f}" for x in t["mibs"]))
        L.append("    CPU s/GiB  " + "  ".join(f"{x:.2f}" for x in t["cpu"]))
    for (m, c), xs in mruns.items():
        L.append(f"{m} {'close' if c else 'keep-alive'}:")
        for x in xs:
            L.append(f"    {x['rps']:>9,.0f}/s  p50 {x['p50']:.3g} ms  p99 {x['p99']:.3g} ms  errors {x['errors']}")
    L.append("```\n")
    L.append("## Commands\n")
    L.append("```")
    seen = []
    for c in commands:
        c = re.sub(r"(https?)://127\.0\.0\.1:\d+/", r"\1://127.0.0.1:PORT/", c)
        c = re.sub(r"/tmp/bench-nginx-[^/ ]+", "DIR", c)
        if c not in seen:
            seen.append(c)
    for c in seen:
        # A page shows about 100 columns of a code block: wrap long commands
        # the way a shell reads them, with a backslash at each break.
        L.extend(wrap_command(c, 100))
    L.append("```")
    L.append(f"\nTotal time: {time.monotonic() - started:.0f} s.")
    text = "\n".join(L) + "\n"
    (ROOT / "bench" / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    try:
        main()
    finally:
        # Whatever went wrong, no server outlives the run.
        for p in list(live):
            stop(p, signal.SIGKILL)
