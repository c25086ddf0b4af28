#!/usr/bin/env python3
"""measure.py - stage 07 under load: each strategy upgraded 10 times while
clients keep asking, and what the clients saw.

    python3 07-hot-restart/measure.py --markdown      the README's table
    python3 07-hot-restart/measure.py --json --upgrades 3 --strategy handoff

Clients (threads, loopback only, every wait bounded):
  * NEW_CLIENTS threads: connect, one GET with "Connection: close", read
    the answer, again - many new connections per second;
  * KEEPALIVE_CLIENTS threads: one connection each, a GET after another;
    after a failure, or a "Connection: close" answer, they reconnect.
Meanwhile the upgrader sends SIGHUP to the pid in the pid file, waits until
the file names the next generation and the old one has exited, lets the load
run for PAUSE seconds, and goes again.

A failure is one of: refused (connect: ECONNREFUSED), reset (ECONNRESET or
EPIPE), closed (end of file before a whole answer), timed out (no answer
within TIMEOUT). "Longest wait" is the slowest successful request.

As root, the whole run happens in a network namespace of its own (unshare
--net), where net.ipv4.tcp_migrate_req can be set for reuseport-migrate
without touching the machine; elsewhere that strategy is skipped.
"""

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ["handoff", "stop-start", "reuseport", "reuseport-migrate"]
NEW_CLIENTS = 4
KEEPALIVE_CLIENTS = 4
TIMEOUT = 2.0   # one request
PAUSE = 0.15    # load between two upgrades
BOUND = 10.0    # one upgrade
REQ = b"GET / HTTP/1.1\r\nHost: m\r\n%s\r\n"


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = self.ok = 0
        self.fail = {"refused": 0, "reset": 0, "closed": 0, "timeout": 0}
        self.fail_new = self.fail_keepalive = 0
        self.reconnects = 0
        self.longest = 0.0
        self.keepalive_last = []

    def add(self, outcome, took=0.0, keepalive=False):
        with self.lock:
            self.requests += 1
            if outcome == "ok":
                self.ok += 1
                self.longest = max(self.longest, took)
            else:
                self.fail[outcome] += 1
                if keepalive:
                    self.fail_keepalive += 1
                else:
                    self.fail_new += 1


def read_answer(sock):
    """(generation, close?) of one response, or raises."""
    buf = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            n = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            if len(body) >= n:
                g = int(re.match(rb"served by generation (\d+)", body).group(1))
                return g, b"Connection: close" in head


def one_request(port, sock, close, stats):
    """One GET (on sock, or on a new connection when sock is None). Returns
    (sock or None, generation or None)."""
    t0 = time.monotonic()
    keepalive = sock is not None
    try:
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sock.sendall(REQ % (b"Connection: close\r\n" if close else b""))
        g, closing = read_answer(sock)
    except ConnectionRefusedError:
        outcome = "refused"
    except (ConnectionResetError, BrokenPipeError):
        outcome = "reset"
    except EOFError:
        outcome = "closed"
    except (socket.timeout, TimeoutError):
        outcome = "timeout"
    else:
        stats.add("ok", time.monotonic() - t0)
        if closing and not close:
            with stats.lock:
                stats.reconnects += 1  # told to go: a naive old generation draining
        if closing or close:
            sock.close()
            return None, g
        return sock, g
    stats.add(outcome, keepalive=keepalive)
    if keepalive:
        with stats.lock:
            stats.reconnects += 1
    if sock is not None:
        sock.close()
    return None, None


def run_strategy(binary, strategy, upgrades):
    stats = Stats()
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        pid_file = Path(tmp) / "pid"
        proc = subprocess.Popen([binary, "--serve", "--port", "0", "--strategy", strategy,
                                 "--pid-file", str(pid_file)], stdout=subprocess.PIPE,
                                start_new_session=True)
        try:
            first = proc.stdout.readline().decode()
            m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", first)
            if not m:
                raise RuntimeError(f"{strategy}: the server said {first!r}")
            # drain the narration so the server never blocks on a full pipe
            threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
            port = int(m.group(1))

            def new_conns():
                while not stop.is_set():
                    one_request(port, None, True, stats)

            def keepalive(i):
                sock, last = None, None
                while not stop.is_set():
                    sock, g = one_request(port, sock, False, stats)
                    last = g or last
                # the last request, once every upgrade is over
                sock, g = one_request(port, sock, True, stats)
                with stats.lock:
                    stats.keepalive_last.append(g)

            threads = [threading.Thread(target=new_conns) for _ in range(NEW_CLIENTS)]
            threads += [threading.Thread(target=keepalive, args=(i,))
                        for i in range(KEEPALIVE_CLIENTS)]
            for t in threads:
                t.start()
            done = 0
            try:
                time.sleep(PAUSE)
                for _ in range(upgrades):
                    upgrade(pid_file)
                    done += 1
                    time.sleep(PAUSE)
            finally:
                stop.set()
                for t in threads:
                    t.join(BOUND)
            master = int(pid_file.read_text())
            os.kill(master, signal.SIGTERM)
            wait_gone(master)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=BOUND)
    return {
        "strategy": strategy, "upgrades": done, "requests": stats.requests,
        "failed": sum(stats.fail.values()), **stats.fail,
        "failed_new": stats.fail_new, "failed_keepalive": stats.fail_keepalive,
        "keepalive_reconnects": stats.reconnects,
        "longest_ms": round(stats.longest * 1000, 1),
        "keepalive_last_generation": stats.keepalive_last,
    }


def wait_gone(pid):
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([fd], [], [], BOUND)[0]:
            raise RuntimeError(f"pid {pid} did not exit")
    finally:
        os.close(fd)


def upgrade(pid_file):
    """SIGHUP; returns once the pid file names the next generation and the
    old one has exited (both bounded)."""
    old = int(pid_file.read_text())
    os.kill(old, signal.SIGHUP)
    deadline = time.monotonic() + BOUND
    # rename(2): the file always holds a whole pid, the old one or the new
    while int(pid_file.read_text()) == old:
        if time.monotonic() > deadline:
            raise RuntimeError("the next generation did not become ready")
        time.sleep(0.002)
    wait_gone(old)


def set_migrate(on):
    Path("/proc/sys/net/ipv4/tcp_migrate_req").write_text("1\n" if on else "0\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print the markdown table")
    ap.add_argument("--json", action="store_true", help="print one JSON object per strategy")
    ap.add_argument("--upgrades", type=int, default=10)
    ap.add_argument("--strategy", choices=STRATEGIES, action="append")
    ap.add_argument("--binary", default=str(ROOT / "07-hot-restart" / "hot_restart"))
    a = ap.parse_args()
    if not (0 < a.upgrades <= 50):
        ap.error("--upgrades must be 1..50")
    inside = os.environ.get("HR07_NETNS") == "1"
    if not inside and os.geteuid() == 0 and shutil.which("unshare"):
        env = dict(os.environ, HR07_NETNS="1")
        r = subprocess.run(["unshare", "--net", "--", sys.executable, *sys.argv], env=env)
        if r.returncode != 125:  # 125: we could not make a namespace here
            sys.exit(r.returncode)
    if inside and subprocess.run(["ip", "link", "set", "lo", "up"]).returncode != 0:
        sys.exit(125)
    rows, skipped = [], []
    for s in a.strategy or STRATEGIES:
        if s == "reuseport-migrate":
            if not inside:
                skipped.append(f"{s}: skipped, needs root for a network namespace of its own")
                continue
            set_migrate(True)
        elif inside:
            set_migrate(False)
        rows.append(run_strategy(a.binary, s, a.upgrades))
    if a.json:
        for r in rows:
            print(json.dumps(r))
    if a.markdown or not a.json:
        print("| strategy | upgrades | requests | failed | refused | reset | closed | timed out "
              "| failed: new conn / keep-alive | keep-alive reconnects | longest wait "
              "| last keep-alive request served by |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            last = sorted(set(r["keepalive_last_generation"]), key=lambda g: (g is None, g))
            print(f"| {r['strategy']} | {r['upgrades']} | {r['requests']} | {r['failed']} "
                  f"| {r['refused']} | {r['reset']} | {r['closed']} | {r['timeout']} "
                  f"| {r['failed_new']} / {r['failed_keepalive']} | {r['keepalive_reconnects']} "
                  f"| {r['longest_ms']} ms | generation {', '.join(map(str, last))} |")
        for s in skipped:
            print(f"\n{s}")


if __name__ == "__main__":
    main()
