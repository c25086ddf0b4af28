"""Kernel TLS (stage 05 --ktls, stage 06 --tls --ktls): the handed-off
session runs in the kernel.

These tests need a kernel that takes TCP_ULP "tls"; `make test-ktls` boots
one under qemu (tests/ktls/) and runs this file inside it. Elsewhere they
skip with one line, except the one that checks what the program says on a
kernel without kTLS.

Availability is tried, not read: /proc/sys/net/ipv4/tcp_available_ulp lists
only the ULP modules already loaded, and the kernel loads "tls" on demand
when a process with CAP_NET_ADMIN sets TCP_ULP (net/ipv4/tcp_ulp.c).
"""

import errno
import os
import re
import signal
import socket
import ssl
import subprocess

import pytest

from conftest import ROOT, SAN, WAIT, read_trace, run
from test_05_ssl import (  # noqa: F401  (s_client is a fixture)
    PROG, SUITES, Lines, RawTLS, _forged_record, client_ctx, connect, events, s_client,
)
import test_06_prefork_server as t06

TCP_ULP = getattr(socket, "TCP_ULP", 31)  # <netinet/tcp.h>
GUEST = os.environ.get("KTLS_GUEST") == "1"


def probe():
    """0 if TCP_ULP "tls" attaches to a connected TCP socket here, else the errno."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        with socket.create_connection(lsock.getsockname(), timeout=WAIT) as c:
            try:
                c.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
                return 0
            except OSError as e:
                return e.errno


def available_ulps():
    with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
        return f.read().split()


# The guest's kernel has kTLS (that is what it is for) and nothing has loaded
# the module yet: the first test below shows the program loading it. Trying
# here would load it before that test could look.
HAVE_KTLS = GUEST or probe() == 0
needs_ktls = pytest.mark.skipif(not HAVE_KTLS, reason="no kernel TLS here: run make test-ktls")


@pytest.fixture(scope="session", autouse=True)
def build():
    """In the guest the tree is read-only and was built before it booted;
    elsewhere, as conftest.py does."""
    if not GUEST:
        cmd = ["make", "-s", "all"] + (["SAN=1"] if SAN else [])
        subprocess.run(cmd, cwd=ROOT, check=True, timeout=600)


def ktls_events(trace):
    return [e["installed"] for e in events(read_trace(trace), "worker", "ktls")]


# ---------------------------------------------------------------------------
# A kernel without kTLS (the host, usually)
# ---------------------------------------------------------------------------


@pytest.mark.skipif(HAVE_KTLS, reason="this kernel has kTLS: see the tests below")
def test_without_ktls_force_fails_and_auto_says_why_once(serve):
    assert probe() == errno.ENOENT
    r = run(PROG, "--ktls", "force", "--mode", "after-handshake", expect=1)
    assert r.stderr.splitlines() == [
        'ssl_handoff: --ktls force: no kernel TLS here (setsockopt TCP_ULP "tls": '
        "ENOENT (No such file or directory): no kTLS in this kernel)"
    ]
    s = serve(PROG, "--ktls", "auto")
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        assert c.ask("a")[0] == "parent" and c.ask("b")[0] == "worker"
        tls.unwrap().close()
    s.stop()
    said = [l for l in s.lines if "kernel TLS" in l]  # said once, not per connection
    assert len(said) == 1 and "kernel TLS: not available here (setsockopt TCP_ULP" in said[0]


# ---------------------------------------------------------------------------
# A kernel with kTLS (the guest)
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not GUEST, reason="needs a kernel that has not loaded tls yet: run make test-ktls")
def test_the_first_try_loads_the_module(serve, tmp_path):
    """The first test in the guest. tcp_available_ulp lists the ULP modules
    loaded so far, not what the kernel can do: --ktls force must try the
    setsockopt (which loads "tls"; we run as root: CAP_NET_ADMIN)."""
    assert "tls" not in available_ulps()
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--ktls", "force", "--trace", trace)
    assert "tls" in available_ulps()
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        assert c.ask("a")[0] == "parent" and c.ask("b")[0] == "worker"
        tls.unwrap().close()
    s.stop()
    assert ktls_events(trace) == [1]


@pytest.mark.skipif(not GUEST, reason="the guest's CPU and modules: run make test-ktls")
def test_the_guest_kernel_seals_with_aes_ni():
    """What the measurements of 05-ssl/README.md say of the guest: its
    emulated CPU has AES-NI and PCLMULQDQ, and the kernel's AES-NI and
    carry-less GHASH modules are loaded (tests/ktls/init)."""
    with open("/proc/cpuinfo") as f:
        flags = next(l for l in f if l.startswith("flags")).split()
    assert "aes" in flags and "pclmulqdq" in flags
    with open("/proc/modules") as f:
        loaded = {l.split()[0] for l in f}
    assert {"aesni_intel", "ghash_clmulni_intel"} <= loaded


@needs_ktls
def test_auto_uses_the_kernel_and_says_why(serve, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--ktls", "auto", "--trace", trace)
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        assert c.ask("a")[0] == "parent" and c.ask("b")[0] == "worker"
        tls.unwrap().close()
    s.stop()
    said = [l for l in s.lines if "kernel TLS: " in l]
    assert len(said) == 1 and re.search(r"kernel TLS: available here \(setsockopt TCP_ULP", said[0])
    assert ktls_events(trace) == [1]


@needs_ktls
@pytest.mark.parametrize("suite", SUITES)
def test_force_each_suite_python_and_s_client(serve, s_client, tmp_path, suite):
    """The worker installs TLS_TX and TLS_RX and serves with plain write and
    recvmsg; both clients close with close_notify, answered by the worker
    through the kernel (unwrap() returns only once the answer came)."""
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--ktls", "force", "--ciphersuites", suite,
              "--trace", trace)
    with connect(s.port, client_ctx()) as tls:
        assert tls.cipher()[0] == suite
        c = Lines(tls)
        assert c.ask("first line, for the parent") == ("parent", s.pid, "FIRST LINE, FOR THE PARENT")
        role, pid, text = c.ask("second, through the kernel")
        assert (role, text) == ("worker", "SECOND, THROUGH THE KERNEL")
        # three 10,000-byte lines in one write: records of 2^14 bytes end
        # mid-line; every line comes back whole, in order
        lines = [ch * 10000 for ch in "abc"]
        tls.sendall("".join(l + "\n" for l in lines).encode())
        assert [c.readline() for _ in lines] == [f"[worker {pid}] " + l.upper() for l in lines]
        tls.unwrap().close()
    sc = s_client(s.port, "-ciphersuites", suite)
    sc.send("hello from s_client")
    assert sc.reply()[::2] == ("parent", "HELLO FROM S_CLIENT")
    sc.send("again")
    assert sc.reply()[::2] == ("worker", "AGAIN")
    assert sc.finish() == 0
    assert any(f"Cipher is {suite}" in l for l in sc.seen), sc.seen
    t = read_trace(trace)
    assert ktls_events(trace) == [1, 1]
    assert len(events(t, "worker", "close_notify")) == 2
    assert not events(t, "worker", "alert")


@needs_ktls
def test_client_alert_arrives_as_a_control_message(serve, tmp_path):
    trace, keylog = tmp_path / "t.jsonl", tmp_path / "keylog"
    s = serve(PROG, "--mode", "after-handshake", "--ktls", "force", "--ciphersuites",
              "TLS_AES_128_GCM_SHA256", "--trace", trace)
    c = RawTLS(s.port, keylog)
    try:
        c.sock.sendall(c.record(b"hello\n"))  # record 0 under the client's application key
        assert c.readline().startswith("[parent ")
        (line,) = [l for l in keylog.read_text().splitlines() if l.startswith("CLIENT_TRAFFIC_SECRET_0 ")]
        # record 1: a fatal handshake_failure alert (inner type 21)
        c.sock.sendall(_forged_record(bytes.fromhex(line.split()[2]), 1, bytes([2, 40, 21])))
        assert c.sock.recv(100) == b""  # the worker closed, sending nothing
    finally:
        c.close()
    s.stop()
    t = read_trace(trace)
    assert ktls_events(trace) == [1]
    assert [e["alert"] for e in events(t, "worker", "client_alert")] == [40]


@needs_ktls
@pytest.mark.parametrize("letter,requested", [("K", 1), ("k", 0)])
def test_key_update_ends_the_connection_with_an_alert(serve, s_client, tmp_path, letter, requested):
    """Before Linux 6.14 the kernel cannot take the client's next key: the
    worker says so with an alert, and the client reads no garbage."""
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--ktls", "force", "--trace", trace)
    sc = s_client(s.port)
    sc.send("hello")
    assert sc.reply()[0] == "parent"
    sc.send("handed off")
    assert sc.reply()[0] == "worker"
    sc.key_update(letter)
    sc.send("after the key update")
    assert sc.proc.wait(timeout=WAIT) != 0  # the alert ends s_client
    sc.kill()
    while not sc.errq.empty():  # s_client's stderr after KEYUPDATE
        sc.err.append(sc.errq.get())
    assert not [l for l in sc.seen if "AFTER THE KEY UPDATE" in l]
    assert any(l and "alert internal error" in l for l in sc.err), sc.err
    t = read_trace(trace)
    assert [e["requested"] for e in events(t, "worker", "peer_key_update")] == [requested]
    assert [e["alert"] for e in events(t, "worker", "alert")] == ["internal_error"]


@needs_ktls
def test_rx_refused_after_tx_closes_never_falls_back(serve, tmp_path):
    """TLS_TX is in and TLS_RX is refused (a test-only switch): the worker
    closes. Falling back to its own record layer would seal every record
    twice, the second time by the kernel under a key and nonce it also uses."""
    trace = tmp_path / "t.jsonl"
    env = {**os.environ, "SSL_HANDOFF_KTLS_REFUSE_RX": "1"}
    s = serve(PROG, "--mode", "after-handshake", "--ktls", "force", "--trace", trace, env=env)
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        assert c.ask("a")[0] == "parent"
        with pytest.raises((ssl.SSLEOFError, EOFError)):
            c.ask("b")
    s.stop()
    t = read_trace(trace)
    assert ktls_events(trace) == [0]
    assert not events(t, "worker", "reply")


@needs_ktls
def test_install_checks_what_a_first_holder_left():
    """05-ssl/ktls_test.c: ktls_install where a process that held the socket
    before did nothing, attached the ULP, installed TLS_TX, or both - with
    the same state (adopted), or one differing in a sequence number, a key,
    an iv, the suite (BROKEN, EPROTO)."""
    r = run("05-ssl/ktls_test")
    lines = r.stdout.splitlines()
    assert lines[-1] == "result: ktls_test=pass cases=10", r.stdout
    assert sum(": ADOPTED" in l for l in lines) == 4
    assert sum(": BROKEN (EPROTO)" in l for l in lines) == 5


@pytest.mark.skipif(HAVE_KTLS, reason="this kernel has kTLS: see the test above")
def test_install_checks_say_there_is_no_ktls_here():
    r = run("05-ssl/ktls_test", expect=1)
    assert r.stderr.startswith("ktls_test: no kernel TLS here (setsockopt TCP_ULP")


def test_bulk_bench_rounds_and_rows():
    """05-ssl/ktls_bench, small: two interleaved rounds of the four ways, each
    row a median with its range; without kTLS the first two rows say why
    (and it exits 1: not every way could run)."""
    r = run("05-ssl/ktls_bench", "--mib", "1", "--rounds", "2", expect=0 if HAVE_KTLS else 1)
    rows = [l for l in r.stdout.splitlines() if l.startswith("| ") and "---" not in l][1:]
    assert [l.split(" | ")[0] for l in rows] == [
        "| sendfile over kernel TLS", "| write over kernel TLS",
        "| stage 05 record layer (libcrypto)", "| OpenSSL SSL_write"]
    number = r"\d+\.\d \(\d+\.\d–\d+\.\d\) \| \d+\.\d \| \d\.\d\d× \(\d\.\d\d–\d\.\d\d\)(, even)? \|"
    for row in rows[2:] + (rows[:2] if HAVE_KTLS else []):
        assert re.search(number, row), row
    assert rows[3].endswith("| 1.00× (1.00–1.00) |")
    if not HAVE_KTLS:
        assert rows[0].endswith("| - | - | no kernel TLS: ENOENT |")
    run("05-ssl/ktls_bench", "--rounds", "0", expect=2)


# ---------------------------------------------------------------------------
# Stage 06: --tls --ktls, each worker puts the sessions it takes in the kernel
# ---------------------------------------------------------------------------

PROG06 = t06.PROG


def events_06(trace, event):
    """Every worker's events of that name (the roles are worker-0, ..., and
    new-worker-0, ... for the ones that replace a dead worker)."""
    return [e for e in read_trace(trace) if "worker-" in e["role"] and e["event"] == event]


def ktls_events_06(trace):
    """(installed, errno) of every worker's "ktls" event: errno None when installed."""
    return [(e["installed"], e.get("errno")) for e in events_06(trace, "ktls")]


def tls_stat():
    """The kernel's own count of kTLS sessions (/proc/net/tls_stat, there once
    the tls module is loaded): TlsTxSw and TlsRxSw go up by one for each
    direction installed with software crypto."""
    with open("/proc/net/tls_stat") as f:
        return {k: int(v) for k, v in (line.split() for line in f)}


def stat_delta(before):
    after = tls_stat()
    return after["TlsTxSw"] - before["TlsTxSw"], after["TlsRxSw"] - before["TlsRxSw"]


@pytest.mark.skipif(HAVE_KTLS, reason="this kernel has kTLS: see the tests below")
def test_06_without_ktls_force_fails_and_auto_says_why_once(serve):
    r = run(PROG06, "--serve", "--tls", "--ktls", "force", expect=1)
    assert r.stderr.splitlines() == [
        'handoff_server: --ktls force: no kernel TLS here (setsockopt TCP_ULP "tls": '
        "ENOENT (No such file or directory): no kTLS in this kernel)"
    ]
    s = serve(PROG06, "--workers", "2", "--tls", "--ktls", "auto")
    assert t06.tls_get(s.port)[0] == 200  # on the workers' own record layer
    s.stop()
    said = [l for l in s.lines if "kernel TLS" in l]  # said once, by the dispatcher
    assert len(said) == 1 and "kernel TLS: not available here (setsockopt TCP_ULP" in said[0]
    assert said[0].endswith("the workers use their own record layer")


@needs_ktls
def test_06_without_ktls_the_sessions_stay_on_the_record_layer(serve):
    """--ktls off is the default: nothing goes into the kernel, nothing is said."""
    s = serve(PROG06, "--workers", "1", "--tls")
    before = tls_stat()
    assert t06.tls_get(s.port)[0] == 200
    t06.counters_until(s, lambda c: c["acked"] == 1)
    assert stat_delta(before) == (0, 0)
    s.stop()
    assert not [l for l in s.lines if "kernel TLS" in l]


@needs_ktls
@pytest.mark.parametrize("suite", SUITES)
def test_06_curl_each_connection_in_the_kernel(serve, tmp_path, suite):
    """curl, keep-alive and Connection: close. The dispatcher runs the
    handshake; the worker installs the session (the kernel counts it in
    /proc/net/tls_stat) and answers both requests of the kept-alive
    connection with plain send."""
    trace = tmp_path / "t.jsonl"
    s = serve(PROG06, "--workers", "2", "--tls", "--ktls", "auto", "--trace", trace)
    (said,) = t06.wait_count(s, r"kernel TLS: ", 1)
    assert re.search(r"kernel TLS: available here \(setsockopt TCP_ULP", said), said
    before = tls_stat()
    url = f"https://127.0.0.1:{s.port}"
    out = subprocess.run(
        [t06.CURL, "-sSkv", "--tlsv1.3", "--tls13-ciphers", suite, "--max-time", str(WAIT),
         "-w", " connects=%{num_connects} code=%{http_code}\n", f"{url}/one", f"{url}/two"],
        capture_output=True, timeout=WAIT * 2,
    )
    assert out.returncode == 0, out.stderr
    assert f"SSL connection using TLSv1.3 / {suite}".encode() in out.stderr, out.stderr
    lines = out.stdout.decode().splitlines()
    pids = [int(re.match(r"served by worker (\d+) ", l).group(1)) for l in lines]
    assert lines[0].endswith("connects=1 code=200") and lines[1].endswith("connects=0 code=200")
    assert pids[0] == pids[1] in t06.children(s.pid)
    out = subprocess.run(
        [t06.CURL, "-sSki", "--tls13-ciphers", suite, "--max-time", str(WAIT),
         "-H", "Connection: close", f"{url}/bye"],
        capture_output=True, timeout=WAIT * 2,
    )
    assert out.returncode == 0, out.stderr
    assert b"HTTP/1.1 200" in out.stdout and b"Connection: close" in out.stdout
    c = t06.counters_until(s, lambda c: c["acked"] == 2)
    assert c["accepted"] == 2 and c["tls_failed"] == c["tls_unexportable"] == 0
    assert stat_delta(before) == (2, 2)
    s.stop()
    assert ktls_events_06(trace) == [(1, None)] * 2


@needs_ktls
@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "close"])
def test_06_wrk_every_connection_in_the_kernel(serve, tmp_path, close):
    """wrk over HTTPS gets only 200s, and every connection a worker took was
    installed in the kernel: as many as the dispatcher handed off, by the
    workers' trace and by the kernel's count."""
    trace = tmp_path / "t.jsonl"
    s = serve(PROG06, "--workers", "2", "--tls", "--ktls", "force", "--trace", trace)
    before = tls_stat()
    done = t06.wrk(f"https://127.0.0.1:{s.port}/", close)
    # wrk has closed every connection; a handshake it left half-way is
    # counted as failed by the dispatcher, never handed off
    c = t06.counters_until(s, lambda c: c["accepted"] == c["acked"] + c["tls_failed"])
    assert c["acked"] >= (done if close else 1), c  # with close: a connection per request
    assert c["tls_unexportable"] == 0
    delta = stat_delta(before)
    s.stop()
    got = ktls_events_06(trace)
    assert len(got) == c["acked"]
    # Every session a worker took went into the kernel, but for those wrk
    # closed at the end of its run between the handshake and the install:
    # TCP_ULP attaches to an established connection only (ENOTCONN), and
    # those are left to the record layer, which reads their EOF.
    installed = got.count((1, None))
    assert got.count((0, "ENOTCONN")) == len(got) - installed <= 8
    assert delta == (installed, installed)


@needs_ktls
def test_06_pipelined_requests_and_close_notify_through_the_kernel(serve, tmp_path):
    """Forty requests in one write are answered in order. Then a request
    head one byte short of the worker's buffer: the worker has room for one
    byte, and the client's close_notify that follows is a 2-byte record
    that must still be judged whole (the worker looks with MSG_PEEK before
    it reads into so little room). unwrap() returns once the worker answered
    with its own close_notify, through the kernel."""
    trace = tmp_path / "t.jsonl"
    s = serve(PROG06, "--workers", "1", "--tls", "--ktls", "force", "--trace", trace)
    with t06.tls_connect(s.port, t06.tls_context()) as c:
        c.sendall(b"".join(f"GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(40)))
        buf = bytearray()
        got = [t06.tls_response(c, buf) for _ in range(40)]
        assert [g[0] for g in got] == [200] * 40 and not buf
        head = b"GET / HTTP/1.1\r\nX: "
        c.sendall(head + b"a" * (8192 - 1 - len(head)))
        c.unwrap()
    s.stop()
    assert ktls_events_06(trace) == [(1, None)]
    assert [e["alert"] for e in events_06(trace, "goodbye")] == ["close_notify"]


@needs_ktls
def test_06_key_update_ends_the_connection_with_an_alert(serve):
    """s_client's "K" sends a KeyUpdate. On the workers' own record layer the
    next request is answered (test_06_prefork_server.py); with the session
    in a kernel before 6.14, which cannot take the client's next key, the
    worker ends the connection with internal_error and answers nothing."""
    s = serve(PROG06, "--workers", "1", "--tls", "--ktls", "force")
    p = subprocess.Popen(["openssl", "s_client", "-tls1_3", "-crlf", "-connect",
                          f"127.0.0.1:{s.port}"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write(b"GET /1 HTTP/1.1\n\n")
        p.stdin.flush()
        assert b"HTTP/1.1 200 OK" in t06.read_until(p.stdout, b"served by worker")
        p.stdin.write(b"K\n")
        p.stdin.flush()
        t06.read_until(p.stderr, b"KEYUPDATE")
        p.stdin.write(b"GET /2 HTTP/1.1\n\n")
        p.stdin.flush()
        t06.read_until(p.stderr, b"alert internal error")
        assert p.wait(WAIT) != 0
        assert b"served by worker" not in p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(WAIT)
        p.stdin.close()
        p.stdout.close()
        p.stderr.close()


@needs_ktls
def test_06_rx_refused_after_tx_closes_never_falls_back(serve, tmp_path):
    """TLS_TX is in and TLS_RX refused (a test-only switch): the worker closes
    the connection, and the kernel's count shows one direction installed."""
    trace = tmp_path / "t.jsonl"
    env = {**os.environ, "HANDOFF_SERVER_KTLS_REFUSE_RX": "1"}
    s = serve(PROG06, "--workers", "1", "--tls", "--ktls", "force", "--trace", trace, env=env)
    before = tls_stat()
    with t06.tls_connect(s.port, t06.tls_context()) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        # EOF, or a reset for the request the worker never read: not one
        # byte of application data (records of the worker's own, sealed
        # again by the kernel, would arrive as garbage)
        try:
            got = t06.until_eof(c)
        except ConnectionResetError:
            got = b""
        assert got == b""
    c = t06.counters_until(s, lambda c: c["acked"] == 1)
    assert stat_delta(before) == (1, 0)
    t06.wait_count(s, r"kernel TLS half installed \(ENOPROTOOPT .*\): closing the connection", 1)
    s.stop()
    assert ktls_events_06(trace) == [(0, "ENOPROTOOPT")]


@needs_ktls
def test_06_client_closed_before_the_install_is_left_to_the_record_layer(serve, tmp_path):
    """TCP_ULP attaches to an ESTABLISHED connection only. The client sends
    its Finished, a request and its FIN in one segment (TCP_CORK holds the
    first two; shutdown() puts the FIN on them), so the connection is in
    CLOSE_WAIT before the dispatcher has finished the handshake. The worker's
    install gets ENOTCONN with the socket untouched, and its own record layer
    answers the request."""
    trace = tmp_path / "t.jsonl"
    s = serve(PROG06, "--workers", "1", "--tls", "--ktls", "force", "--trace", trace)
    before = tls_stat()
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as raw:
        obj, incoming, outgoing = t06.bio_handshake(t06.tls_context(), raw)
        obj.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        raw.sendall(outgoing.read())  # the client's Finished and the request, held
        raw.shutdown(socket.SHUT_WR)  # ... and sent now, with the FIN
        incoming.write(t06.until_eof(raw))
        incoming.write_eof()
    plain = obj.read(65536)
    assert plain.startswith(b"HTTP/1.1 200 OK") and t06.BODY.search(plain)
    t06.counters_until(s, lambda c: c["acked"] == 1)
    assert stat_delta(before) == (0, 0)
    s.stop()
    assert ktls_events_06(trace) == [(0, "ENOTCONN")]
    # the client ended with a TCP FIN, not close_notify: nothing to answer
    assert not events_06(trace, "goodbye")


@needs_ktls
def test_06_a_worker_that_dies_before_its_ack_leaves_the_kernel_state_to_the_next(serve, tmp_path):
    """Two connections in one message to the only worker, which dies before
    its ack on the second (--die-before-ack 2), after it has put the first
    one's session in the kernel. The dispatcher gives both, with their
    states, to the new worker: there TCP_ULP says EEXIST, the directions in
    the kernel are read back (getsockopt TLS_TX, TLS_RX) and found to be the
    state it holds, and it serves the connection on them. Both clients get
    their answer; the kernel counts two sessions, not three."""
    trace = tmp_path / "t.jsonl"
    s = serve(PROG06, "--workers", "1", "--tls", "--ktls", "force", "--die-before-ack", "2",
              "--trace", trace)
    before_kids, before = t06.children(s.pid), tls_stat()
    raws, clients = [], []
    try:
        for _ in range(2):  # accepted in this order: the second is the one to die on
            raws.append(socket.create_connection(("127.0.0.1", s.port), timeout=WAIT))
            clients.append(t06.bio_handshake(t06.tls_context(), raws[-1]))
        # Both handshakes wait for the client's Finished. Sent while the
        # dispatcher is stopped, both are there when it wakes: they finish in
        # one pass of its loop and go to the worker in one message.
        os.kill(s.pid, signal.SIGSTOP)
        try:
            for raw, (obj, _, outgoing) in zip(raws, clients):
                obj.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                raw.sendall(outgoing.read())
        finally:
            os.kill(s.pid, signal.SIGCONT)
        bodies = []
        for raw, (obj, incoming, _) in zip(raws, clients):
            incoming.write(t06.until_eof(raw))
            plain = b""
            while chunk := obj.read(65536):  # b"": the worker's close_notify
                plain += chunk
            assert plain.startswith(b"HTTP/1.1 200 OK"), plain
            bodies.append(int(t06.BODY.search(plain).group(1)))
    finally:
        for raw in raws:
            raw.close()
    c = t06.counters_until(s, lambda c: c["acked"] == 2)
    assert c["redispatched"] == 2 and c["respawned"] == 1 and c["handed_off"] == 4
    (dead,) = before_kids
    assert bodies[0] == bodies[1] != dead
    assert stat_delta(before) == (2, 2)
    s.stop()
    got = [(e["pid"], e["installed"], e.get("adopted")) for e in events_06(trace, "ktls")]
    assert got == [(dead, 1, 0), (bodies[0], 1, 1), (bodies[0], 1, 0)]
