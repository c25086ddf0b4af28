"""Stage 06: the pre-forked server with a robust handoff, and the models it is
measured against.

Checked from outside: real HTTP clients (curl, raw sockets) against every
model; the bytes a client gets back and which process wrote them; the
dispatcher's counters (SIGUSR1 prints them); its descriptor table in
/proc/PID/fd; worker crashes forced with --die-before-ack and with SIGKILL
from the test, under load.

The loads are the same under SAN=1 (make check): the sanitizer build of the
server keeps up with a Python client.
"""

import os
import re
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import WAIT, read_trace, run

PROG = "06-prefork-server/handoff_server"
MODELS = ["handoff", "fork-per-conn", "reuseport", "proxy"]
CURL = "/usr/bin/curl"
BODY = re.compile(rb"served by worker (\d+)")
RUN_LOAD = 120.0  # bound for a whole load phase (client threads joined within it)
ABSENT = 1.0  # for showing that something does NOT happen (ABSENT_MS in common/util.h)


def events(trace, role=None, event=None):
    return [e for e in trace if (role is None or e["role"] == role) and (event is None or e["event"] == event)]


def children(pid):
    """Live children of pid, from every /proc/N/stat's ppid (the
    /proc/PID/task/TID/children list is documented as unreliable)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[1]) == pid and rest[0] != "Z":
            found.append(int(entry))
    return sorted(found)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_count(s, pattern, n, timeout=WAIT):
    """Wait (bounded) until n stdout lines of the server match the regex;
    returns those lines. Waits on the drain thread's condition, not a clock."""
    pat = re.compile(pattern)
    deadline = time.monotonic() + timeout
    with s._line:
        while True:
            found = [l for l in s.lines if pat.search(l)]
            if len(found) >= n:
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"fewer than {n} lines matching {pattern!r}: {s.lines[-10:]}"
            s._line.wait(min(left, 0.5))


def counters(s):
    """SIGUSR1 -> the next `counters:` line, as a dict of ints."""
    seen = sum(1 for l in s.lines if l.startswith("counters: "))
    s.proc.send_signal(signal.SIGUSR1)
    line = wait_count(s, r"^counters: ", seen + 1)[seen]
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


def counters_until(s, cond):
    """Ask (bounded) until the counters satisfy cond; returns them."""
    deadline = time.monotonic() + WAIT
    while True:
        c = counters(s)
        if cond(c):
            return c
        assert time.monotonic() < deadline, f"counters never satisfied the condition: {c}"


def http_get(port, path="/", close=True, timeout=WAIT):
    """One request on a new connection; returns (status, body, head) or raises.
    With Connection: close the server promised to close: the response must be
    followed by end-of-file (a process that kept a copy of the connection -
    a worker that inherited it, a dispatcher that never closed its copy -
    would hold it open, and the client would wait for nothing)."""
    extra = "Connection: close\r\n" if close else ""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
        got = read_response(c)
        if close:
            assert until_eof(c) == b"", "bytes after a Connection: close response"
        return got


def read_response(c):
    """Reads exactly one response (MSG_PEEK first, so a pipelined response
    behind it stays in the socket); returns (status, body, head)."""
    while True:
        buf = c.recv(65536, socket.MSG_PEEK)
        if not buf:
            raise ConnectionError("EOF before a response")
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode()
            length = int(re.search(r"(?i)\r\ncontent-length: *(\d+)", head).group(1))
            if len(buf) >= end + 4 + length:
                break
        # not all there yet: wait for more than we have
        more = c.recv(len(buf) + 1, socket.MSG_PEEK | socket.MSG_WAITALL)
        if len(more) == len(buf):
            raise ConnectionError(f"EOF inside a response: {buf!r}")
    whole = c.recv(end + 4 + length, socket.MSG_WAITALL)
    return int(head.split()[1]), whole[end + 4 :], head


def until_eof(c):
    """Reads until EOF (bounded by the socket timeout); returns what came."""
    out = b""
    while True:
        chunk = c.recv(4096)
        if not chunk:
            return out
        out += chunk


# ---- the demo ----------------------------------------------------------------


@pytest.mark.parametrize("die", [None, 1])
def test_demo_crash_before_ack_is_redispatched(tmp_path, die):
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--trace", trace, *(["--die-before-ack", die] if die else []))
    res = r.result()
    assert res == {"client_ok": "1", "accepted": "2", "acked": "2", "redispatched": "1", "respawned": "1"}
    t = read_trace(trace)
    (crash,) = events(t, event="crash")
    # the crashed worker received the chosen connection (the 2nd by default)
    # and never acknowledged it
    victim = die or 2
    assert crash["id"] == victim
    acks_by_crasher = [e for e in events(t, event="ack") if e["pid"] == crash["pid"]]
    assert acks_by_crasher == []
    # the same id was handed off twice, to two different worker roles
    handoffs = [e for e in events(t, "dispatcher", "handoff") if e["id"] == victim]
    assert len(handoffs) == 2 and handoffs[0]["to"] != handoffs[1]["to"]
    # the dispatcher closed its copy of each connection only after the ack
    order = [(e["event"], e.get("id")) for e in t if e["role"] == "dispatcher"]
    for i in (1, 2):
        assert order.index(("close_copy", i)) > order.index(("handoff", i))
    # the client's three answers came from live workers, none from the crashed one
    bodies = [l for l in r.narration("client") if "-> 200" in l]
    assert len(bodies) == 3
    pids = {int(m.group(1)) for l in bodies if (m := re.search(r"served by worker (\d+)", l))}
    assert len(pids) >= 1 and crash["pid"] not in pids


def test_readme_diagram_is_what_the_demo_prints():
    r = run(PROG, "--mermaid")
    fresh = r.stdout[r.stdout.index("sequenceDiagram") :].strip()
    readme = Path(__file__).resolve().parent.parent / "06-prefork-server" / "README.md"
    blocks = re.findall(r"```mermaid\n(.*?)```", readme.read_text(), re.S)
    assert fresh in [b.strip() for b in blocks]


@pytest.mark.parametrize(
    "args",
    [["--workers", "0"], ["--model", "threads"], ["--serve", "--mermaid"], ["--die-before-ack", "3"],
     ["--serve", "--model", "reuseport", "--die-before-ack", "1"], ["--respawn-fails"],
     ["--serve", "--model", "fork-per-conn", "--respawn-fails"], ["extra"]],
)
def test_bad_arguments_exit_2(args):
    r = run(PROG, *args, expect=2)
    assert len(r.stderr.strip().splitlines()) == 1


# ---- HTTP against every model -------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_curl_every_model(serve, model):
    s = serve(PROG, "--model", model, "--workers", "2")
    url = f"http://127.0.0.1:{s.port}"
    # two URLs in one curl: the second reuses the connection (keep-alive)
    out = subprocess.run(
        [CURL, "-sS", "--max-time", str(WAIT), "-w", " connects=%{num_connects} code=%{http_code}\n",
         f"{url}/one", f"{url}/two"],
        capture_output=True, timeout=WAIT * 2,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 2
    pids = [int(re.match(r"served by worker (\d+) ", l).group(1)) for l in lines]
    assert lines[0].endswith("connects=1 code=200") and lines[1].endswith("connects=0 code=200")
    assert pids[0] == pids[1] != s.pid  # one connection, one worker, not the dispatcher
    if model != "fork-per-conn":
        assert pids[0] in children(s.pid)
    # Connection: close is honoured: the answer says so and EOF follows
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"GET /bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, body, head = read_response(c)
        assert status == 200 and BODY.fullmatch(body) and "Connection: close" in head
        assert until_eof(c) == b""


def wrk(url, close):
    """wrk, a real load generator, for a second on 8 connections (each request
    on a new one with close). Checks that it made requests and got only 2xx
    answers and no socket error; returns how many it made."""
    args = ["wrk", "-t1", "-c8", "-d1s", "--timeout", "5s"]
    if close:
        args += ["-H", "Connection: close"]
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=WAIT * 2)
    assert out.returncode == 0, out.stderr
    done = int(re.search(r"(\d+) requests in", out.stdout).group(1))
    assert done > 0, out.stdout
    assert "Non-2xx" not in out.stdout and "Socket errors" not in out.stdout, out.stdout
    return done


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "close"])
def test_wrk_every_model(serve, model, close):
    """wrk gets only 200s from every model."""
    s = serve(PROG, "--model", model, "--workers", "2")
    wrk(f"http://127.0.0.1:{s.port}/", close)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "request_bytes",
    [b"POST / HTTP/1.1\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n", b"GET nopath HTTP/1.1\r\n\r\n",
     b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
     b"GET / HTTP/1.1\r\nX: " + b"a" * 9000],
    ids=["post", "version", "target", "header", "body", "oversized"],
)
def test_bad_request_gets_400_and_close(serve, model, request_bytes):
    s = serve(PROG, "--model", model, "--workers", "1")
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(request_bytes)
        status, _, head = read_response(c)
        assert status == 400 and "Connection: close" in head
        assert until_eof(c) == b""


@pytest.mark.parametrize("model", MODELS)
def test_slow_client_cannot_pin_a_worker(serve, model):
    # one worker; a client that sends half a request head and stops
    s = serve(PROG, "--model", model, "--workers", "1", "--header-timeout", "500")
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: sl")
        # meanwhile the same worker serves others
        for _ in range(3):
            status, body, _ = http_get(s.port)
            assert status == 200 and BODY.fullmatch(body)
        # and the slow one is told 408 and closed once its bound runs out
        status, _, _ = read_response(slow)
        assert status == 408
        assert until_eof(slow) == b""


def test_pipelined_requests_are_answered_in_order(serve):
    s = serve(PROG, "--workers", "1")
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\nConnection: close\r\n\r\n")
        got = [read_response(c)[0] for _ in range(3)]
        assert got == [200, 200, 200] and until_eof(c) == b""


def test_http10_closes_unless_asked_to_keep_alive(serve):
    s = serve(PROG, "--workers", "1")
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        status, _, head = read_response(c)
        assert status == 200 and "Connection: close" in head and until_eof(c) == b""
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        for _ in range(2):
            c.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, _, head = read_response(c)
            assert status == 200 and "Connection: keep-alive" in head


# ---- the robust handoff ----------------------------------------------------------


def test_die_before_ack_client_still_gets_200(serve):
    s = serve(PROG, "--workers", "2", "--die-before-ack", "1")
    before = set(children(s.pid))
    status, body, _ = http_get(s.port)
    assert status == 200
    server_pid = int(BODY.fullmatch(body).group(1))
    # the ack may still be in the channel when the answer is already out
    c = counters_until(s, lambda c: c["acked"] == 1)
    assert c["respawned"] == 1 and c["accepted"] == 1 and c["redispatched"] == 1 and c["acked"] == 1 and c["lost"] == 0
    assert c["handed_off"] == 2  # the same descriptor, twice
    after = set(children(s.pid))
    (dead,) = before - after  # one worker gone, replaced by a new one
    assert server_pid in before and server_pid != dead and len(after - before) == 1


def test_batch_with_a_crash_every_unacked_descriptor_is_redispatched(serve):
    # The dispatcher is stopped while 40 clients connect, so on SIGCONT it
    # accepts all 40 at once and passes them in one message per worker (20
    # each). The worker given the 5th dies on it, before acknowledging its
    # message: all 20 of its descriptors must go to the other worker.
    s = serve(PROG, "--workers", "2", "--die-before-ack", "5")
    conns = []
    os.kill(s.pid, signal.SIGSTOP)
    try:
        for _ in range(40):
            conns.append(socket.create_connection(("127.0.0.1", s.port), timeout=WAIT))
    finally:
        os.kill(s.pid, signal.SIGCONT)
    try:
        for c in conns:
            c.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        answers = [read_response(c) for c in conns]
    finally:
        for c in conns:
            c.close()
    assert [a[0] for a in answers] == [200] * 40
    c = counters_until(s, lambda c: c["acked"] == 40)
    assert c["redispatched"] == 20 and c["respawned"] == 1 and c["lost"] == 0
    assert c["handed_off"] == 60 and c["accepted"] == 40
    # every answer came from the surviving worker
    assert len({BODY.fullmatch(a[1]).group(1) for a in answers}) == 1


def test_sigkill_idle_worker_is_respawned(serve):
    s = serve(PROG, "--workers", "2")
    victim = children(s.pid)[0]
    os.kill(victim, signal.SIGKILL)
    s.wait_line(r"worker-\d \(pid %d\) died" % victim)
    wait_count(s, r"worker-\d is pid", 3)  # the replacement
    c = counters_until(s, lambda c: c["respawned"] == 1)
    assert c["lost"] == 0
    assert len(children(s.pid)) == 2 and victim not in children(s.pid)
    for _ in range(4):
        status, body, _ = http_get(s.port)
        assert status == 200 and int(BODY.fullmatch(body).group(1)) in children(s.pid)


def test_crash_loop_backs_off_instead_of_fork_looping(serve):
    # --respawn-fails: every replacement exits before it is ready. After one
    # kill, the slot's respawns must come 100, 200, 400 ms apart - not in a
    # tight loop - while the other worker keeps serving.
    s = serve(PROG, "--workers", "2", "--respawn-fails")
    os.kill(children(s.pid)[0], signal.SIGKILL)
    lines = wait_count(s, r"died before it was ready: respawning in \d+ ms", 3)
    assert [re.search(r"in (\d+) ms", l).group(1) for l in lines[:3]] == ["100", "200", "400"]
    c = counters(s)
    assert 3 <= c["respawned"] < 10  # a fork loop would be in the thousands by now
    for _ in range(3):
        assert http_get(s.port)[0] == 200


def test_queue_bound_refuses_with_503_then_serves_the_rest(serve):
    s = serve(PROG, "--workers", "1", "--inflight-max", "1", "--queue-max", "1")
    (worker,) = children(s.pid)
    os.kill(worker, signal.SIGSTOP)  # it can acknowledge nothing now
    conns = []
    try:
        conns.append(socket.create_connection(("127.0.0.1", s.port), timeout=WAIT))
        counters_until(s, lambda c: c["handed_off"] == 1)  # in flight, not acked
        conns.append(socket.create_connection(("127.0.0.1", s.port), timeout=WAIT))
        counters_until(s, lambda c: c["accepted"] == 2)  # queued: the worker is full
        with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as third:
            status, _, head = read_response(third)
            assert status == 503 and "Connection: close" in head and until_eof(third) == b""
        os.kill(worker, signal.SIGCONT)
        for c in conns:
            c.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert read_response(c)[0] == 200
    finally:
        os.kill(worker, signal.SIGCONT)
        for c in conns:
            c.close()
    c = counters_until(s, lambda c: c["acked"] == 2)
    assert c["refused"] == 1 and c["accepted"] == 3


def test_received_descriptors_are_close_on_exec(serve):
    s = serve(PROG, "--workers", "1")
    (worker,) = children(s.pid)
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert read_response(c)[0] == 200  # the worker holds it now
        sockets = 0
        for fd in os.listdir(f"/proc/{worker}/fd"):
            if os.readlink(f"/proc/{worker}/fd/{fd}").startswith("socket:"):
                with open(f"/proc/{worker}/fdinfo/{fd}") as f:
                    flags = int(re.search(r"flags:\s*(\d+)", f.read()).group(1), 8)
                assert flags & os.O_CLOEXEC, f"worker fd {fd} is not close-on-exec"
                sockets += 1
        assert sockets >= 2  # the channel and the client's connection


@pytest.mark.parametrize("model", MODELS)
def test_sigterm_lets_a_worker_finish_a_request_in_progress(serve, model):
    s = serve(PROG, "--model", model, "--workers", "1")
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as idle, \
            socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        for conn in (idle, c):
            conn.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert read_response(conn)[0] == 200  # a worker holds both connections
        c.sendall(b"GET /last HTTP/1.1\r\nHost: t")  # half a request
        s.proc.send_signal(signal.SIGTERM)
        # the worker is draining (fork-per-conn: both children are)
        wait_count(s, r"finishing the \d connection\(s\) I hold", 2 if model == "fork-per-conn" else 1)
        # the idle keep-alive connection is closed, the half-sent request answered
        assert until_eof(idle) == b""
        c.sendall(b"\r\n\r\n")
        status, body, head = read_response(c)
        assert status == 200 and "Connection: close" in head
        assert until_eof(c) == b""
    assert s.stop() == 0
    last = [l for l in s.lines if l.startswith("counters: ")][-1]
    if model == "handoff":
        assert "accepted=2 " in last and "acked=2 " in last


# ---- load -------------------------------------------------------------------------


def test_chaos_sigkill_workers_under_load(serve):
    """Concurrent clients, and a worker SIGKILLed every `every` answers. The
    only requests allowed to fail are ones a killed worker had already
    acknowledged (the dispatcher counts those as `lost`)."""
    total, every, kills, nthreads = 2000, 250, 6, 8
    s = serve(PROG, "--workers", "2")
    done = threading.Semaphore(0)
    failures, lock, next_i = [], threading.Lock(), [0]

    def client():
        while True:
            with lock:
                if next_i[0] >= total:
                    return
                next_i[0] += 1
            try:
                status, body, _ = http_get(s.port)
                if status != 200 or not BODY.fullmatch(body):
                    failures.append(("status", status))
            except (ConnectionError, OSError) as e:
                failures.append(("error", repr(e)))
            done.release()

    threads = [threading.Thread(target=client) for _ in range(nthreads)]
    for t in threads:
        t.start()
    killed = []
    try:
        for k in range(kills):
            for _ in range(every):  # progress, not time, decides when to kill
                assert done.acquire(timeout=WAIT * 2), "no progress under load"
            victim = children(s.pid)[k % 2]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            wait_count(s, r"worker-\d is pid", 2 + k + 1)  # replaced: two to pick from again
    finally:
        for t in threads:
            t.join(RUN_LOAD)
    assert not any(t.is_alive() for t in threads)
    c = counters_until(s, lambda c: c["accepted"] == total)
    assert c["respawned"] == kills
    assert c["refused"] == 0
    assert len(failures) <= c["lost"], (failures, c)
    assert total - len(failures) >= total * 0.9
    assert all(kind == "error" for kind, _ in failures), failures


def test_thousand_concurrent_connections(serve):
    n = 1000
    s = serve(PROG, "--workers", "2")
    conns = []
    try:
        for _ in range(n):
            conns.append(socket.create_connection(("127.0.0.1", s.port), timeout=WAIT * 2))
        for c in conns:
            c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # keep-alive: all stay open
        assert all(read_response(c)[0] == 200 for c in conns)
        # all of them open at once, held by the workers - not by the dispatcher
        held = sum(fd_count(w) for w in children(s.pid))
        assert held >= n
        c = counters_until(s, lambda c: c["acked"] == n)
        assert fd_count(s.pid) < 64
    finally:
        for c in conns:
            c.close()


def test_dispatcher_descriptors_do_not_grow(serve):
    """The descriptor table after 10,000 connections is the one after 100."""
    s = serve(PROG, "--workers", "2")

    def hammer(count, nthreads=8):
        left = [count]
        lock = threading.Lock()
        errors = []

        def go():
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                try:
                    assert http_get(s.port)[0] == 200
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)

        ts = [threading.Thread(target=go) for _ in range(nthreads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(RUN_LOAD)
        assert not errors and not any(t.is_alive() for t in ts)

    hammer(100)
    counters_until(s, lambda c: c["acked"] == 100)
    fds_100 = sorted(os.listdir(f"/proc/{s.pid}/fd"), key=int)
    hammer(10000 - 100)
    c = counters_until(s, lambda c: c["acked"] == 10000)
    fds_10000 = sorted(os.listdir(f"/proc/{s.pid}/fd"), key=int)
    assert fds_10000 == fds_100
    assert c["accepted"] == 10000 and c["lost"] == 0 and c["refused"] == 0


# ---- --tls: HTTPS through stage 05's after-handshake handoff ---------------------


def tls_context(keylog=None, max_version=None):
    """A client context that trusts anything (the server's certificate is
    made in memory at start; curl -k does the same)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version:
        ctx.maximum_version = max_version
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if keylog:
        ctx.keylog_filename = str(keylog)
    return ctx


def tls_connect(port, ctx, timeout=WAIT):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def bio_handshake(ctx, raw):
    """A TLS client in memory (ssl.MemoryBIO) over the plain socket `raw`: the
    test decides which bytes go out when. Returns (tls, incoming, outgoing)
    once the handshake is done; the client's Finished is still in `outgoing`."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            return obj, incoming, outgoing
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            chunk = raw.recv(65536)
            assert chunk, "the server closed during the handshake"
            incoming.write(chunk)


def tls_response(c, buf):
    """Reads one response from a TLS socket; buf (a bytearray) keeps what
    came after it. Returns (status, body, head)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode()
            length = int(re.search(r"(?i)\r\ncontent-length: *(\d+)", head).group(1))
            if len(buf) >= end + 4 + length:
                body = bytes(buf[end + 4 : end + 4 + length])
                del buf[: end + 4 + length]
                return int(head.split()[1]), body, head
        chunk = c.recv(65536)
        if not chunk:
            raise ConnectionError(f"EOF inside a response: {bytes(buf)!r}")
        buf += chunk


def tls_get(port, ctx=None, path="/"):
    with tls_connect(port, ctx or tls_context()) as c:
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        got = tls_response(c, bytearray())
        # the server ends with close_notify: a clean EOF (without it, Python's
        # ssl raises SSLEOFError here)
        assert c.recv(1) == b""
        return got


def test_tls_curl_keep_alive_and_close(serve):
    s = serve(PROG, "--workers", "2", "--tls")
    url = f"https://127.0.0.1:{s.port}"
    # two URLs in one curl: the second reuses the TLS connection
    out = subprocess.run(
        [CURL, "-sSkv", "--tlsv1.3", "--max-time", str(WAIT), "-w",
         " connects=%{num_connects} code=%{http_code}\n", f"{url}/one", f"{url}/two"],
        capture_output=True, timeout=WAIT * 2,
    )
    assert out.returncode == 0, out.stderr
    assert b"SSL connection using TLSv1.3" in out.stderr
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 2
    pids = [int(re.match(r"served by worker (\d+) ", l).group(1)) for l in lines]
    assert lines[0].endswith("connects=1 code=200") and lines[1].endswith("connects=0 code=200")
    assert pids[0] == pids[1] != s.pid and pids[0] in children(s.pid)
    # Connection: close
    out = subprocess.run(
        [CURL, "-sSki", "--max-time", str(WAIT), "-H", "Connection: close", f"{url}/bye"],
        capture_output=True, timeout=WAIT * 2,
    )
    assert out.returncode == 0, out.stderr
    assert b"HTTP/1.1 200" in out.stdout and b"Connection: close" in out.stdout
    assert BODY.search(out.stdout)
    c = counters_until(s, lambda c: c["acked"] == 2)
    assert c["accepted"] == 2 and c["tls_failed"] == 0 and c["tls_unexportable"] == 0


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "close"])
def test_tls_wrk(serve, close):
    """wrk over HTTPS: only 200s, and every connection handed off is acked."""
    s = serve(PROG, "--workers", "2", "--tls")
    wrk(f"https://127.0.0.1:{s.port}/", close)
    c = counters_until(s, lambda c: c["accepted"] == c["acked"] + c["tls_failed"])
    assert c["acked"] >= 1 and c["tls_unexportable"] == 0


def test_tls_python_client_no_secret_in_output(serve, tmp_path):
    s = serve(PROG, "--workers", "2", "--tls")
    keylog = tmp_path / "keylog"
    ctx = tls_context(keylog)
    with tls_connect(s.port, ctx) as c:
        assert c.version() == "TLSv1.3"
        buf = bytearray()
        # keep-alive, and pipelined: three requests in one write
        c.sendall(b"GET /1 HTTP/1.1\r\n\r\n")
        status, body, head = tls_response(c, buf)
        assert status == 200 and "Connection: keep-alive" in head
        pid = int(BODY.fullmatch(body).group(1))
        assert pid in children(s.pid)
        c.sendall(b"GET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\nGET /4 HTTP/1.1\r\n\r\n")
        for _ in range(3):
            status, body, _ = tls_response(c, buf)
            assert status == 200 and int(BODY.fullmatch(body).group(1)) == pid
        # a request cut over two TLS records
        c.sendall(b"GET /5 HTTP/1.1\r\nHo")
        c.sendall(b"st: t\r\n\r\n")
        assert tls_response(c, buf)[0] == 200
        # our close_notify is answered with the server's (unwrap waits for it)
        raw = c.unwrap()
        raw.close()
    # Connection: close ends with the server's close_notify
    status, body, head = tls_get(s.port, ctx)
    assert status == 200 and "Connection: close" in head
    secrets = [line.split()[-1] for line in keylog.read_text().splitlines() if line.strip()]
    assert len(secrets) >= 2 * 5  # handshake and traffic secrets of both connections
    out = "\n".join(s.lines + s.err_lines).lower()
    assert not any(sec.lower() in out for sec in secrets)


def test_tls_die_before_ack_redispatches_with_the_state(serve):
    s = serve(PROG, "--workers", "2", "--tls", "--die-before-ack", "1")
    before = set(children(s.pid))
    status, body, _ = tls_get(s.port)
    assert status == 200
    server_pid = int(BODY.fullmatch(body).group(1))
    c = counters_until(s, lambda c: c["acked"] == 1)
    assert c["respawned"] == 1 and c["accepted"] == 1 and c["redispatched"] == 1 and c["lost"] == 0
    assert c["handed_off"] == 2  # the same descriptor and state, twice
    after = set(children(s.pid))
    (dead,) = before - after
    assert server_pid in before and server_pid != dead


def test_tls_burst_with_a_crash_every_state_travels(serve):
    # As the plain batch test, 40 connections accepted at once; their
    # handshakes finish in the dispatcher's epoll loop in whatever order the
    # clients go, so how many share a message (with their states) varies.
    # The worker given the 5th dies before acknowledging: every connection
    # of its message is re-dispatched, states and all, and answered.
    s = serve(PROG, "--workers", "2", "--tls", "--die-before-ack", "5")
    ctx = tls_context()
    raws, results, threads = [], [None] * 40, []
    os.kill(s.pid, signal.SIGSTOP)
    try:
        for _ in range(40):
            raws.append(socket.create_connection(("127.0.0.1", s.port), timeout=WAIT * 3))

        def client(i):
            try:
                with ctx.wrap_socket(raws[i], server_hostname="localhost") as c:
                    c.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                    results[i] = tls_response(c, bytearray())
            except Exception as e:  # noqa: BLE001 - reported below
                results[i] = e

        threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
    finally:
        os.kill(s.pid, signal.SIGCONT)
        for t in threads:
            t.join(RUN_LOAD)
        for r in raws:
            r.close()
    assert not any(t.is_alive() for t in threads)
    c = counters_until(s, lambda c: c["acked"] == 40)
    assert c["redispatched"] >= 1 and c["respawned"] == 1
    assert c["handed_off"] == 40 + c["redispatched"] and c["accepted"] == 40
    assert c["tls_failed"] == 0
    # Every un-acknowledged connection was re-dispatched, state and all, and
    # answered. Under load, handshakes may finish one by one, so the worker
    # that dies may already have acknowledged (and be serving) an earlier
    # connection: those - and only those - die with it, counted as lost.
    failed = [r for r in results if not (isinstance(r, tuple) and r[0] == 200)]
    assert all(isinstance(r, Exception) for r in failed), failed
    assert len(failed) == c["lost"], (failed, c)


def test_tls_silent_client_does_not_stall_the_dispatcher(serve):
    """The handshake runs in the dispatcher's epoll loop: a client that
    connects and says nothing holds a descriptor, not the dispatcher. With a
    handshake bound of 10 minutes, another client is still served at once;
    with a short bound the silent one is closed and counted."""
    s = serve(PROG, "--workers", "1", "--tls", "--handshake-timeout", "600000")
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as silent:
        counters_until(s, lambda c: c["accepted"] == 1)
        assert tls_get(s.port)[0] == 200
        # the ack may still be in the channel when the answer is already out
        c = counters_until(s, lambda c: c["acked"] == 1)
        assert c["tls_failed"] == 0 and c["accepted"] == 2
        silent.sendall(b"\x16\x03\x01")  # a ClientHello that never ends
        assert tls_get(s.port)[0] == 200
    s2 = serve(PROG, "--workers", "1", "--tls", "--handshake-timeout", "300")
    with socket.create_connection(("127.0.0.1", s2.port), timeout=WAIT) as silent:
        assert until_eof(silent) == b""  # closed at the bound
    c = counters_until(s2, lambda c: c["tls_failed"] == 1)
    assert c["handed_off"] == 0


def test_tls_failed_handshakes_are_counted_and_closed(serve):
    s = serve(PROG, "--workers", "1", "--tls")
    # TLS 1.2: the server speaks 1.3 only (its state export needs it)
    with pytest.raises(ssl.SSLError):
        tls_get(s.port, tls_context(max_version=ssl.TLSVersion.TLSv1_2))
    # plain HTTP to the HTTPS port
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            got = until_eof(c)  # at most OpenSSL's alert
        except ConnectionResetError:  # closed with our request unread
            got = b""
        assert b"HTTP/" not in got
    c = counters_until(s, lambda c: c["tls_failed"] == 2)
    assert c["handed_off"] == 0 and c["accepted"] == 2
    # and the server goes on serving
    assert tls_get(s.port)[0] == 200


@pytest.mark.parametrize("args", [["--tls"], ["--serve", "--model", "proxy", "--tls"], ["--serve", "--read-ahead"],
                                  ["--serve", "--ktls", "auto"], ["--serve", "--tls", "--ktls", "on"]])
def test_tls_bad_arguments_exit_2(args):
    r = run(PROG, *args, expect=2)
    assert len(r.stderr.strip().splitlines()) == 1


def read_until(stream, needle, timeout=WAIT):
    """Reads a pipe (bounded) until needle has come; returns all read."""
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"never got {needle!r}: {out[-300:]!r}"
        r, _, _ = select.select([stream], [], [], left)
        if r:
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, f"EOF before {needle!r}: {out[-300:]!r}"
            out += chunk
    return out


def test_tls_key_update_from_the_client(serve):
    """openssl s_client's "K" command sends a KeyUpdate (update_requested):
    the worker's record layer moves its read key on (and answers with its own
    KeyUpdate before its next record); the next request is still answered."""
    s = serve(PROG, "--workers", "1", "--tls")
    p = subprocess.Popen(["openssl", "s_client", "-tls1_3", "-crlf", "-connect", f"127.0.0.1:{s.port}"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write(b"GET /1 HTTP/1.1\n\n")
        p.stdin.flush()
        first = read_until(p.stdout, b"served by worker")
        assert b"HTTP/1.1 200 OK" in first
        p.stdin.write(b"K\n")
        p.stdin.flush()
        read_until(p.stderr, b"KEYUPDATE")  # s_client has taken the command: a separate read
        p.stdin.write(b"GET /2 HTTP/1.1\n\n")
        p.stdin.flush()
        second = read_until(p.stdout, b"served by worker")
        assert second.count(b"HTTP/1.1 200 OK") == 1 and b"400" not in second
    finally:
        p.stdin.close()
        p.wait(WAIT)
        p.stdout.close()
        p.stderr.close()


def test_tls_partial_records_are_buffered(serve):
    """The worker's epoll loop is non-blocking: a record that arrives in
    pieces waits in its session buffer until it is whole (raw bytes split
    with an in-memory TLS client, ssl.MemoryBIO)."""
    s = serve(PROG, "--workers", "1", "--tls")
    ctx = tls_context()
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as raw:
        obj, incoming, outgoing = bio_handshake(ctx, raw)
        raw.sendall(outgoing.read())  # the client's Finished
        obj.write(b"GET /a HTTP/1.1\r\n\r\n")
        obj.write(b"GET /b HTTP/1.1\r\nConnection: close\r\n\r\n")
        records = outgoing.read()
        first_len = 5 + int.from_bytes(records[3:5], "big")
        # header and 3 bytes of the first record: nothing can be answered yet
        raw.sendall(records[:8])
        # what comes within a second is the session tickets, no answer
        if select.select([raw], [], [], ABSENT)[0]:
            incoming.write(raw.recv(65536))
        with pytest.raises(ssl.SSLWantReadError):
            obj.read(65536)
        # the rest of the first record and part of the second
        raw.sendall(records[8 : first_len + 4])
        raw.sendall(records[first_len + 4 :])
        got = b""
        while True:
            chunk = raw.recv(65536)
            if not chunk:
                break
            got += chunk
        incoming.write(got)
        plain = b""
        while True:
            # b"": the server's close_notify (without one, SSLWantReadError:
            # the in-memory input has nothing more)
            data = obj.read(65536)
            if not data:
                break
            plain += data
        assert plain.count(b"HTTP/1.1 200 OK") == 2 and plain.count(b"served by worker") == 2


def test_tls_unexportable_session_is_closed_not_handed_off(serve):
    """Fail closed. --read-ahead lets OpenSSL read more than a record: a
    request sent in the same write as the client's Finished lands in its
    buffer, raw - bytes no exported state can carry. The dispatcher must not
    hand that session off: it sends close_notify, closes, counts it."""
    s = serve(PROG, "--workers", "1", "--tls", "--read-ahead")
    ctx = tls_context()
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as raw:
        obj, incoming, outgoing = bio_handshake(ctx, raw)
        obj.write(b"GET / HTTP/1.1\r\n\r\n")
        raw.sendall(outgoing.read())  # Finished and the request in one segment
        got = b""
        while True:
            chunk = raw.recv(65536)
            if not chunk:
                break
            got += chunk
        incoming.write(got)
        assert obj.read(65536) == b""  # tickets, then close_notify: no answer
    c = counters_until(s, lambda c: c["tls_unexportable"] == 1)
    assert c["handed_off"] == 0 and c["tls_failed"] == 0
    s.wait_line(r"not handing off a TLS session I cannot export exactly \(OpenSSL holds raw bytes")
