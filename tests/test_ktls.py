"""Kernel TLS (stage 05, --ktls): the handed-off session runs in the kernel.

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
import socket
import ssl
import subprocess

import pytest

from conftest import ROOT, SAN, WAIT, read_trace, run
from test_05_ssl import (  # noqa: F401  (s_client is a fixture)
    PROG, SUITES, Lines, RawTLS, _forged_record, client_ctx, connect, events, s_client,
)

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
