"""Stage 05: handing off TLS connections.

Checked from outside, with TLS clients nobody here wrote: Python's ssl module
(for each TLS 1.3 suite, with its keylog file on so the test can look for the
secrets in everything the server printed) and `openssl s_client -tls1_3`
(KeyUpdate requested and not requested after the handoff). A tampering proxy
flips a bit after the handoff; a raw-socket client sends truncated, oversized
and wrong-type records; --bad-seq and --read-ahead break it on purpose.
"""

import gc
import os
import queue
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, WAIT, read_trace, run

PROG = "05-ssl/ssl_handoff"
SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
REPLY = re.compile(r"^\[(parent|worker) (\d+)\] (.*)$")


def events(trace, role=None, event=None):
    return [e for e in trace if (role is None or e["role"] == role) and (event is None or e["event"] == event)]


def client_ctx(keylog=None, cafile=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cafile:
        ctx.load_verify_locations(cafile)
    else:  # the server's certificate is made in memory at start: nothing to verify against
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if keylog:
        ctx.keylog_filename = str(keylog)
    return ctx


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


class Lines:
    """Line reader over a TLS socket (bounded by the socket timeout)."""

    def __init__(self, tls):
        self.tls, self.buf = tls, b""

    def readline(self):
        while b"\n" not in self.buf:
            chunk = self.tls.recv(4096)
            if not chunk:
                raise EOFError(f"connection closed; had {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def ask(self, text):
        self.tls.sendall(text.encode() + b"\n")
        m = REPLY.match(self.readline())
        assert m, "not a reply line"
        return m.group(1), int(m.group(2)), m.group(3)


def connect(port, ctx):
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except Exception:
        raw.close()
        raise


def secrets_in(keylog):
    """Every secret in an NSS keylog file, as lower-case hex."""
    out = []
    for line in Path(keylog).read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append(parts[2].lower())
    return out


# ---------------------------------------------------------------------------
# The known-answer test and the demo
# ---------------------------------------------------------------------------


def test_selftest_rfc8448_known_answers():
    r = run(PROG, "--selftest")
    kat = [l for l in r.lines if "RFC 8448" in l]
    assert len(kat) == 6 and all(l.endswith(" ok") for l in kat)
    assert r.result()["selftest"] == "pass"
    assert not [l for l in r.lines if l.endswith("FAILED")]


def test_demo_all_three_modes(tmp_path):
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--trace", trace)
    assert r.result() == {
        "naive": "client_failed",
        "before-handshake": "served",
        "after-handshake": "served",
    }
    t = read_trace(trace)
    # naive: the worker read a TLS record header, and the client's TLS failed
    (ct,) = events(t, "worker", "ciphertext")
    assert (ct["type"], ct["version"]) == (23, "0x0303")
    assert ct["length"] == len("hello, who is there?\n") + 1 + 16  # content type + AEAD tag
    (err,) = events(t, "client", "tls_error")
    assert err["reason"] == "wrong_version_number"
    # after-handshake: what was exported is what the worker resumed with
    (exp,) = events(t, "parent", "export")
    (res,) = events(t, "worker", "resume")
    assert (exp["read_seq"], exp["write_seq"]) == (1, 3)  # 1 line in; 2 tickets + 1 reply out
    assert {k: exp[k] for k in ("read_seq", "write_seq", "pending")} == {
        k: res[k] for k in ("read_seq", "write_seq", "pending")
    }
    replies = [l for l in r.narration("client") if "got back" in l]
    assert len(replies) == 4  # before: 2 from the worker; after: parent, then worker
    assert "[parent " in replies[2] and "[worker " in replies[3]


def _readme_diagrams():
    text = (ROOT / "05-ssl" / "README.md").read_text()
    return re.findall(r"<!-- diagram: (\S+) -->\n```mermaid\n(.*?)```", text, re.S)


def test_readme_diagrams_are_fresh_runs():
    diagrams = _readme_diagrams()
    assert [m for m, _ in diagrams] == ["naive", "before-handshake", "after-handshake"]
    for mode, body in diagrams:
        r = run(PROG, "--mode", mode, "--mermaid")
        printed = r.stdout[r.stdout.index("sequenceDiagram") :]
        assert printed == body, f"README diagram for {mode} is stale"


def test_bad_arguments_exit_2():
    assert run(PROG, "--mode", "sideways", expect=2).stderr.strip()
    assert run(PROG, "--workers", "0", expect=2).stderr.strip()
    assert "--cert" in run(PROG, "--cert", "x.pem", expect=2).stderr
    assert run(PROG, "--serve", "--ciphersuites", "NOPE", expect=2).stderr.strip()
    assert run(PROG, "--help").stdout.startswith("usage:")


def test_missing_cert_file_exits_1_naming_it():
    r = run(PROG, "--serve", "--cert", "/nonexistent/cert.pem", "--key", "/nonexistent/key.pem", expect=1)
    assert r.stderr.strip().splitlines() == ["ssl_handoff: /nonexistent/cert.pem: No such file or directory"]


# ---------------------------------------------------------------------------
# Python's ssl module
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_python_after_handshake_each_suite_no_secret_leaks(serve, tmp_path, suite):
    trace, keylog = tmp_path / "t.jsonl", tmp_path / "keylog"
    s = serve(PROG, "--mode", "after-handshake", "--ciphersuites", suite, "--trace", trace)
    with connect(s.port, client_ctx(keylog)) as tls:
        assert tls.cipher()[0] == suite
        c = Lines(tls)
        role1, pid1, text1 = c.ask("first line, for the parent")
        role2, pid2, text2 = c.ask("second line, after the handoff")
        role3, pid3, _ = c.ask("third")
        assert (role1, pid1, text1) == ("parent", s.pid, "FIRST LINE, FOR THE PARENT")
        assert (role2, text2) == ("worker", "SECOND LINE, AFTER THE HANDOFF")
        assert pid2 != s.pid and parent_of(pid2) == s.pid and (role3, pid3) == ("worker", pid2)
        # a clean close: our close_notify is answered with the worker's
        tls.unwrap().close()
    t = read_trace(trace)
    assert events(t, "worker", "close_notify")
    assert events(t, "parent", "handshake")[0]["suite"] == suite and events(t, "parent", "export")
    s.stop()
    found = secrets_in(keylog)
    assert len(found) >= 4  # handshake and traffic secrets, both sides
    seen = ("\n".join(s.lines + s.err_lines) + trace.read_text()).lower()
    for secret in found:
        assert secret not in seen, "a TLS secret appeared in the server's output or trace"


def test_pipelined_lines_across_records_after_handoff(serve):
    """Three 10,000-byte lines in one write: OpenSSL cuts them into records of
    2^14 bytes, so the second record (13,619 bytes) arrives while 6,383 bytes
    of a line are buffered - more than a record's worth in all. Every line
    comes back whole, in order (this once ended in an internal_error alert).
    One thread only: an SSL object must not be read and written at once."""
    s = serve(PROG, "--mode", "after-handshake")
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        assert c.ask("first")[0] == "parent"
        for burst in range(5):
            lines = [(b"%d.%d " % (burst, i)) + b"x" * (9999 - len(b"%d.%d " % (burst, i))) for i in range(3)]
            tls.sendall(b"".join(l + b"\n" for l in lines))  # the replies (30 kB) fit in our socket buffer
            for want in lines:
                m = REPLY.match(c.readline())
                assert m and m.group(1) == "worker" and m.group(3) == want.decode().upper()
        tls.unwrap().close()


@pytest.mark.parametrize("suite", SUITES)
def test_python_before_handshake_each_suite(serve, suite):
    s = serve(PROG, "--mode", "before-handshake", "--ciphersuites", suite)
    with connect(s.port, client_ctx()) as tls:
        assert tls.cipher()[0] == suite
        c = Lines(tls)
        r1, r2 = c.ask("one"), c.ask("two")
        assert r1[0] == r2[0] == "worker" and r1[1] == r2[1] != s.pid
        assert (r1[2], r2[2]) == ("ONE", "TWO")
        tls.unwrap().close()


def test_python_naive_connection_fails(serve):
    s = serve(PROG, "--mode", "naive")
    with connect(s.port, client_ctx()) as tls:
        tls.sendall(b"hello\n")
        with pytest.raises(ssl.SSLError, match="WRONG_VERSION_NUMBER|wrong version number"):
            Lines(tls).readline()
    s.wait_line(r"^\[worker \d+\] read 5 bytes: 17 03 03 ")


def test_pending_plaintext_travels_with_the_state(serve, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--trace", trace)
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        tls.sendall(b"first\nsecond\n")  # one write, one record: OpenSSL decrypts both lines
        a, b = REPLY.match(c.readline()), REPLY.match(c.readline())
        assert (a.group(1), a.group(3)) == ("parent", "FIRST")
        assert (b.group(1), b.group(3)) == ("worker", "SECOND")
        tls.unwrap().close()
    (exp,) = events(read_trace(trace), "parent", "export")
    assert exp["pending"] == len(b"second\n")


@pytest.mark.parametrize("tickets", [0, 1, 5])
def test_tickets_are_counted_in_the_write_sequence(serve, tmp_path, tickets):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--tickets", tickets, "--trace", trace)
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        assert c.ask("a")[0] == "parent" and c.ask("b")[0] == "worker"
        tls.unwrap().close()
    t = read_trace(trace)
    assert events(t, "parent", "handshake")[0]["tickets"] == tickets  # counted, not configured
    assert events(t, "parent", "export")[0]["write_seq"] == tickets + 1


def test_connections_go_to_different_workers(serve):
    s = serve(PROG, "--mode", "after-handshake", "--workers", "2")
    # one at a time up to the handoff: the parent runs handshakes and first
    # lines itself, one connection after the other
    with connect(s.port, client_ctx()) as t1:
        c1 = Lines(t1)
        assert c1.ask("x")[0] == "parent"
        w1 = c1.ask("y")  # worker 1 is now busy with this connection
        with connect(s.port, client_ctx()) as t2:
            c2 = Lines(t2)
            assert c2.ask("x")[0] == "parent"
            w2 = c2.ask("y")
            assert w1[0] == w2[0] == "worker" and w1[1] != w2[1]  # the busy one was not picked
            t2.unwrap().close()
        t1.unwrap().close()


def test_own_key_update_before_the_limit(serve, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--rekey-after", "3", "--tickets", "0", "--trace", trace)
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        for i in range(8):
            assert c.ask(f"line {i}")[2] == f"LINE {i}"
        tls.unwrap().close()
    ku = events(read_trace(trace), "worker", "key_update")
    assert ku and all(e["why"] == "limit" for e in ku)


def test_cert_and_key_files(serve, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=WAIT,
    )
    s = serve(PROG, "--cert", cert, "--key", key)
    with connect(s.port, client_ctx(cafile=cert)) as tls:  # verified against the file
        c = Lines(tls)
        assert c.ask("a")[0] == "parent" and c.ask("b")[0] == "worker"
        tls.unwrap().close()


# ---------------------------------------------------------------------------
# A client on raw bytes: Python's SSLObject over memory BIOs, so the test
# decides exactly which bytes go on the wire and when.
# ---------------------------------------------------------------------------


class RawTLS:
    """Every read is bounded: by the socket timeout for each recv, and by WAIT
    for a whole line. End of stream where data was expected is an error."""

    def __init__(self, port, keylog=None, handshake=True, name="localhost"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = client_ctx(keylog).wrap_bio(self.inc, self.out, server_hostname=name)
        self.buf = b""
        if handshake:
            try:
                self._do(self.obj.do_handshake)
            except BaseException:
                self.close()
                raise

    def _flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _do(self, fn, *args):
        deadline = time.monotonic() + WAIT
        while True:
            try:
                r = fn(*args)
                self._flush()
                return r
            except ssl.SSLWantReadError:
                self._flush()
                assert time.monotonic() < deadline, "no answer from the server in time"
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("the server closed the connection where data was expected")
                self.inc.write(data)

    def record(self, data):
        """The TLS record(s) for data, not sent."""
        self.obj.write(data)
        return self.out.read()

    def readline(self):
        deadline = time.monotonic() + WAIT
        while b"\n" not in self.buf:
            assert time.monotonic() < deadline, f"no whole line in time; had {self.buf!r}"
            chunk = self._do(self.obj.read, 65536)
            if not chunk:  # the peer's close_notify
                raise EOFError(f"connection closed; had {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def close(self):
        self.sock.close()
        # the SSLContext holds the keylog file open until it is freed
        self.obj = self.inc = self.out = None
        gc.collect()


@pytest.fixture
def raw_after(serve, tmp_path):
    """A server in after-handshake mode and a RawTLS client whose first line the
    parent has answered (so the worker owns the session from here on)."""
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--trace", trace)
    c = RawTLS(s.port)
    c.sock.sendall(c.record(b"hello\n"))
    assert c.readline().startswith("[parent ")
    yield s, c, trace
    c.close()


def _alert_from_worker(c, trace, name):
    with pytest.raises(ssl.SSLError) as e:
        c.readline()
    assert name.replace("_", " ") in str(e.value).lower().replace("_", " ")
    alerts = events(read_trace(trace), "worker", "alert")
    assert [a["alert"] for a in alerts] == [name]


def test_oversized_record_gets_record_overflow(raw_after):
    s, c, trace = raw_after
    n = 16384 + 256 + 1
    c.sock.sendall(bytes([23, 3, 3, n >> 8, n & 0xFF]) + bytes(64))
    _alert_from_worker(c, trace, "record_overflow")


def test_wrong_type_record_gets_unexpected_message(raw_after):
    s, c, trace = raw_after
    c.sock.sendall(bytes([22, 3, 3, 0, 40]) + bytes(40))  # a plaintext handshake record, now
    _alert_from_worker(c, trace, "unexpected_message")


def test_truncated_record_gets_decode_error(raw_after):
    s, c, trace = raw_after
    rec = c.record(b"this record will be cut short\n")
    c.sock.sendall(rec[: len(rec) // 2])
    c.sock.shutdown(socket.SHUT_WR)  # end of stream in the middle of the record
    _alert_from_worker(c, trace, "decode_error")


def test_garbage_ciphertext_gets_bad_record_mac(raw_after):
    s, c, trace = raw_after
    rec = bytearray(c.record(b"fine\n"))
    rec[-1] ^= 0x80  # the last byte of the tag
    c.sock.sendall(bytes(rec))
    _alert_from_worker(c, trace, "bad_record_mac")


def test_two_records_at_once_without_read_ahead(serve, tmp_path):
    """Read-ahead off: OpenSSL reads exactly one record, the second one stays in
    the kernel for the worker, and the handoff goes through."""
    s = serve(PROG, "--mode", "after-handshake")
    c = RawTLS(s.port)
    try:
        c.sock.sendall(c.record(b"one\n") + c.record(b"two\n"))  # one TCP write, two records
        assert c.readline().startswith("[parent ") and c.readline().startswith("[worker ")
    finally:
        c.close()


def test_read_ahead_makes_the_handoff_fail_closed(serve, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--read-ahead", "--trace", trace)
    c = RawTLS(s.port)
    try:
        c.sock.sendall(c.record(b"one\n") + c.record(b"two\n"))
        assert c.readline().startswith(f"[parent {s.pid}] ONE")
        assert c.readline().startswith(f"[parent {s.pid}] TWO")  # the parent kept it
    finally:
        c.close()
    t = read_trace(trace)
    assert [e["why"] for e in events(t, "parent", "refuse")] == ["read_ahead"]
    assert not events(t, "parent", "handoff")


def _hkdf_expand_label(secret, label, length):
    """RFC 8446 7.1, written here from the RFC with the cryptography package:
    an implementation independent of the one under test."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def _forged_record(secret, seq, inner):
    """A record the worker can authenticate, with any inner plaintext we like."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, iv = _hkdf_expand_label(secret, b"key", 16), _hkdf_expand_label(secret, b"iv", 12)
    nonce = (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")
    header = bytes([23, 3, 3]) + (len(inner) + 16).to_bytes(2, "big")
    return header + AESGCM(key).encrypt(nonce, inner, header)


@pytest.fixture
def forger(serve, tmp_path):
    """A worker that owns the session (the parent answered record 0), and the
    client's traffic secret from Python's keylog file, to seal records with."""
    import cryptography  # noqa: F401  (make test installs python3-cryptography)

    trace, keylog = tmp_path / "t.jsonl", tmp_path / "keylog"
    s = serve(PROG, "--mode", "after-handshake", "--ciphersuites", "TLS_AES_128_GCM_SHA256", "--trace", trace)
    c = RawTLS(s.port, keylog)
    try:
        c.sock.sendall(c.record(b"hello\n"))  # record 0 under the client's application key
        assert c.readline().startswith("[parent ")
        (line,) = [l for l in Path(keylog).read_text().splitlines() if l.startswith("CLIENT_TRAFFIC_SECRET_0 ")]
        yield c, trace, bytes.fromhex(line.split()[2])
    finally:
        c.close()


@pytest.mark.parametrize(
    "inner,alert",
    [
        (b"hi\n" + bytes([99]), "unexpected_message"),  # an inner content type that does not exist
        (bytes(8), "unexpected_message"),  # all padding: no content type at all
        (bytes([24, 0, 0, 1, 2, 22]), "illegal_parameter"),  # KeyUpdate request value 2
        (bytes([24, 0, 0, 2, 0, 0, 22]), "decode_error"),  # KeyUpdate with a 2-byte body
        (bytes([1, 0, 0, 22]), "decode_error"),  # an alert of 3 bytes
        (bytes(16385) + bytes([23]), "record_overflow"),  # 2^14 + 1 bytes of plaintext
    ],
    ids=["inner-type-99", "no-content-type", "keyupdate-value-2", "keyupdate-length", "alert-length",
         "plaintext-2^14+1"],
)
def test_bad_inner_plaintext_gets_the_right_alert(forger, inner, alert):
    c, trace, secret = forger
    c.sock.sendall(_forged_record(secret, 1, inner))  # record 1
    _alert_from_worker(c, trace, alert)


# ---------------------------------------------------------------------------
# The tampering proxy
# ---------------------------------------------------------------------------


class TamperProxy:
    """Relays TCP between a client and the server; tamper() makes it flip one
    bit in the next application_data record the client sends."""

    def __init__(self, port):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.target = port
        self.flip = threading.Event()
        self.flipped = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True)]
        self.threads[0].start()

    def tamper(self):
        self.flip.set()

    def _run(self):
        self.lsock.settimeout(WAIT)
        a, _ = self.lsock.accept()
        b = socket.create_connection(("127.0.0.1", self.target), timeout=WAIT)
        a.settimeout(WAIT)
        t = threading.Thread(target=self._pipe, args=(b, a, False), daemon=True)
        t.start()
        self._pipe(a, b, True)
        t.join(WAIT)
        a.close()
        b.close()

    def _pipe(self, src, dst, parse):
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if not parse:
                    dst.sendall(data)
                    continue
                buf += data
                while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[3:5], "big"):
                    n = 5 + int.from_bytes(buf[3:5], "big")
                    rec, buf = bytearray(buf[:n]), buf[n:]
                    if rec[0] == 23 and self.flip.is_set() and not self.flipped.is_set():
                        rec[5 + (n - 5) // 2] ^= 0x01  # one bit, mid-ciphertext
                        self.flipped.set()
                    dst.sendall(bytes(rec))
        except OSError:
            pass

    def close(self):
        for t in self.threads:
            t.join(WAIT)
        self.lsock.close()


def test_tampered_record_gets_bad_record_mac_and_nothing_crashes(serve, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--trace", trace)
    proxy = TamperProxy(s.port)
    try:
        with connect(proxy.port, client_ctx()) as tls:
            c = Lines(tls)
            assert c.ask("before the handoff")[0] == "parent"
            proxy.tamper()
            with pytest.raises(ssl.SSLError, match="(?i)bad.record.mac"):
                c.ask("this one is tampered with")
            assert proxy.flipped.is_set()
    finally:
        proxy.close()
    assert [a["alert"] for a in events(read_trace(trace), "worker", "alert")] == ["bad_record_mac"]
    # the worker and the server live on: a fresh connection is served
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        assert c.ask("a")[0] == "parent" and c.ask("b")[0] == "worker"
        tls.unwrap().close()


def test_bad_seq_breaks_the_client(serve, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--bad-seq", "--trace", trace)
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        assert c.ask("fine")[0] == "parent"
        with pytest.raises(ssl.SSLError, match="(?i)bad.record.mac"):
            c.ask("the worker answers under a sequence number already used")
    (exp,) = events(read_trace(trace), "parent", "export")
    assert exp["write_seq"] == 2  # one too low: 2 tickets + 1 reply were 0, 1, 2
    run_ = run(PROG, "--mode", "after-handshake", "--bad-seq")
    assert run_.result() == {"after-handshake": "client_failed"}


# ---------------------------------------------------------------------------
# openssl s_client
# ---------------------------------------------------------------------------


class SClient:
    """openssl s_client -tls1_3, driven line by line. Its stdout mixes session
    details with the data the server sent; replies are picked out by REPLY."""

    def __init__(self, port, *extra):
        self.proc = subprocess.Popen(
            ["openssl", "s_client", "-tls1_3", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.q, self.errq = queue.Queue(), queue.Queue()
        self.err = []
        self.seen = []  # every stdout line reply() went past (session details included)
        self.t = [threading.Thread(target=self._drain, args=(self.proc.stdout, self.q.put), daemon=True),
                  threading.Thread(target=self._drain, args=(self.proc.stderr, self.errq.put), daemon=True)]
        for t in self.t:
            t.start()

    @staticmethod
    def _drain(stream, put):
        for raw in stream:
            put(raw.decode(errors="replace").rstrip("\n"))
        put(None)

    def send(self, line):
        # s_client treats lines starting with Q, R, K or k as commands
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def key_update(self, letter):
        """K (update_requested) or k. s_client takes a whole read() of its stdin
        as the command, so nothing else is sent until it says KEYUPDATE."""
        self.send(letter)
        while True:
            line = self.errq.get(timeout=WAIT)
            assert line is not None, f"s_client ended; stderr: {self.err}"
            self.err.append(line)
            if line == "KEYUPDATE":
                return

    def reply(self):
        while True:
            line = self.q.get(timeout=WAIT)
            assert line is not None, f"s_client ended; stderr: {self.err}"
            self.seen.append(line)
            if m := REPLY.match(line):
                return m.group(1), int(m.group(2)), m.group(3)

    def finish(self):
        self.proc.stdin.close()  # end of input: s_client sends close_notify and exits
        try:
            return self.proc.wait(timeout=WAIT)
        finally:
            self.kill()

    def kill(self):
        """Bounded cleanup, also when a test failed half-way."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=WAIT)
        for t in self.t:
            t.join(WAIT)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if not f.closed:
                f.close()


@pytest.fixture
def s_client():
    """s_client(port) -> SClient; killed at teardown if a test left it running."""
    started = []

    def start(port, *extra):
        c = SClient(port, *extra)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("mode", ["before-handshake", "after-handshake"])
def test_s_client_each_mode(serve, s_client, mode, suite):
    s = serve(PROG, "--mode", mode, "--ciphersuites", suite)
    c = s_client(s.port, "-ciphersuites", suite)
    c.send("hello from s_client")
    first = c.reply()
    c.send("again")
    second = c.reply()
    assert c.finish() == 0
    assert first[2] == "HELLO FROM S_CLIENT" and second[2] == "AGAIN"
    assert first[0] == ("parent" if mode == "after-handshake" else "worker")
    assert second[0] == "worker"
    assert any(f"Cipher is {suite}" in l for l in c.seen), c.seen


@pytest.mark.parametrize("letter,requested", [("K", 1), ("k", 0)])
def test_s_client_key_update_after_handoff(serve, s_client, tmp_path, letter, requested):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--trace", trace)
    c = s_client(s.port)
    c.send("hello")
    assert c.reply()[0] == "parent"
    c.send("handed off")
    assert c.reply()[0] == "worker"
    c.key_update(letter)  # s_client: KeyUpdate, update_requested for K
    c.send("after the key update")
    role, _, text = c.reply()
    assert (role, text) == ("worker", "AFTER THE KEY UPDATE")
    assert c.finish() == 0
    t = read_trace(trace)
    assert [e["requested"] for e in events(t, "worker", "peer_key_update")] == [requested]
    # update_requested is answered with the worker's own KeyUpdate, and only then
    assert [e["why"] for e in events(t, "worker", "key_update")] == (["requested"] if requested else [])


def test_key_update_before_the_handoff_fails_closed(serve, s_client, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--trace", trace)
    c = s_client(s.port)
    c.key_update("K")  # before the first line: the parent's OpenSSL processes it
    c.send("first")
    assert c.reply()[:2] == ("parent", s.pid)
    c.send("second")
    assert c.reply()[:2] == ("parent", s.pid)  # refused: the parent keeps the connection
    assert c.finish() == 0
    t = read_trace(trace)
    assert [e["why"] for e in events(t, "parent", "refuse")] == ["key_update"]


# ---------------------------------------------------------------------------
# Kernel TLS
# ---------------------------------------------------------------------------


def _kernel_has_tls():
    """Whether setsockopt(TCP_ULP, "tls") works on a connected TCP socket: the
    kernel loads the module on demand, so /proc/sys/net/ipv4/tcp_available_ulp,
    which lists only what is loaded, is the wrong test."""
    TCP_ULP = 31  # <linux/tcp.h>
    with socket.create_server(("127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.getsockname()) as c:
            a, _ = srv.accept()
            with a:
                try:
                    c.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
                    return True
                except OSError:
                    return False


def test_ktls_force_fails_and_auto_falls_back(serve):
    # Asked here, not in a skipif at import: the probe itself loads the tls
    # module, and tests/test_ktls.py (which imports this file) must find a
    # kernel that has not loaded it yet.
    if _kernel_has_tls():
        pytest.skip("this kernel has kTLS; the fallback is not reachable")
    r = run(PROG, "--ktls", "force", "--mode", "after-handshake", expect=1)
    assert "no kernel TLS here" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    s = serve(PROG, "--ktls", "auto")
    said = s.wait_line(r"kernel TLS: not available here")
    assert said
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        assert c.ask("a")[0] == "parent" and c.ask("b")[0] == "worker"
        tls.unwrap().close()
    s.stop()
    assert len([l for l in s.lines if "kernel TLS" in l]) == 1  # said once, not per connection


# ---------------------------------------------------------------------------
# One slow client holds up no one; what the network sends is printed escaped;
# the worker trusts no length in the state message
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["naive", "after-handshake"])
def test_silent_clients_do_not_delay_the_others(serve, mode):
    """Three clients that stall the parent's handshake or first line, each in
    its own way, are open while a fourth is served. Before, the parent ran one
    blocking SSL_accept and first-line read at a time, bounded by 30 s."""
    s = serve(PROG, "--mode", mode)
    silent = socket.create_connection(("127.0.0.1", s.port), timeout=WAIT)  # not a byte
    half = socket.create_connection(("127.0.0.1", s.port), timeout=WAIT)
    half.sendall(bytes([22, 3, 1, 0, 200, 1, 0]))  # a ClientHello's first 7 bytes
    mute = RawTLS(s.port) if mode == "after-handshake" else None  # handshake, then no line
    try:
        start = time.monotonic()
        raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)  # far below 30 s
        tls = client_ctx().wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        with tls:
            tls.do_handshake()
            if mode == "naive":
                tls.sendall(b"hello\n")
                with pytest.raises(ssl.SSLError, match="WRONG_VERSION_NUMBER|wrong version number"):
                    Lines(tls).readline()
            else:
                c = Lines(tls)
                assert c.ask("past the silent ones")[0] == "parent"
                assert c.ask("and on")[0] == "worker"
                tls.unwrap().close()
        assert time.monotonic() - start < 10
    finally:
        silent.close()
        half.close()
        if mute:
            mute.close()


def test_control_bytes_from_the_client_are_printed_escaped(serve, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--trace", trace)
    c = RawTLS(s.port)
    try:
        c.sock.sendall(c.record(b"hi \x1b[31mred\x07 bell\x00nul \\ back\x7f\r\n"))
        reply = c.readline()
        assert reply == f"[parent {s.pid}] HI \x1b[31MRED\x07 BELL\x00NUL \\ BACK\x7f"  # data is data
    finally:
        c.close()
    s.stop()
    (said,) = [l for l in s.lines if "answered it" in l]
    assert said.endswith(r'"[parent %d] HI \x1b[31MRED\x07 BELL\x00NUL \x5c BACK\x7f"' % s.pid)
    for line in s.lines + s.err_lines:
        assert not re.search(r"[\x00-\x1f\x7f]", line), f"a control byte reached the terminal: {line!r}"


def _channels_of(pid):
    """The SOCK_SEQPACKET descriptors of a process: the parent's ends of its
    workers' channels (/proc/net/unix, type 0005)."""
    seqpacket = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if f[4] == "0005":
            seqpacket.add(f[6])
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in seqpacket:
            out.append(int(fd))
    return out


def _state(pending, suite=0x1301, secret=bytes(32)):
    """A state message in handoff_state.h's format, with any pending length."""
    d = bytes([len(secret)]) + secret + (0).to_bytes(8, "big")
    return b"TLS3" + bytes([1]) + suite.to_bytes(2, "big") + d + d + len(pending).to_bytes(2, "big") + pending


def test_forged_state_with_too_much_pending_plaintext_is_refused(serve, tmp_path):
    """The test takes a copy of the parent's end of a worker channel
    (pidfd_getfd(2)) and sends what a buggy parent could: a state with 20,000
    bytes of pending plaintext. That once passed the decoder (32 KiB then) and
    overflowed the worker's 16 KiB line buffer. Now the message is refused
    (the decoder allows one record, the buffer's size, and take_over() checks
    the buffer again), the connection is closed without a word, and the
    worker lives on."""
    import ctypes

    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--workers", "1", "--trace", trace)
    s.wait_line(r"pre-forked 1 worker;")  # said once the channel is made
    (chan,) = _channels_of(s.pid)
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(s.pid)
    try:
        fd = libc.syscall(438, pidfd, chan, 0)  # pidfd_getfd
        assert fd >= 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(pidfd)
    a, b = socket.socketpair()
    with socket.socket(fileno=fd) as ch, a:
        socket.send_fds(ch, [b"A" + _state(b"x" * 20000)], [b.fileno()])
        b.close()
        a.settimeout(WAIT)
        assert a.recv(1) == b""  # the worker closed the connection without a word
    s.wait_line(r"^\[worker \d+\] a message I cannot decode \(\d+ bytes\): closing fd \d+")
    # and it lives on: a real connection is served
    with connect(s.port, client_ctx()) as tls:
        c = Lines(tls)
        assert c.ask("a")[0] == "parent" and c.ask("b")[0] == "worker"
        tls.unwrap().close()
    s.stop()
    assert not events(read_trace(trace), "worker", "resume")[:-1]  # only the real one resumed


# ---------------------------------------------------------------------------
# --route-by-sni: the server_name, peeked before the handshake
# ---------------------------------------------------------------------------

SNI_CHECK = "05-ssl/sni_check"
ROUTES = ["--route", "a.test=1", "--route", "B.TEST=0"]


def _client_hello(name):
    """The ClientHello Python's ssl writes for server_hostname=name."""
    obj = client_ctx().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _reframe(wire, pieces):
    """The same handshake bytes in `pieces` records instead of one."""
    assert wire[0] == 22 and int.from_bytes(wire[3:5], "big") == len(wire) - 5
    body, out = wire[5:], b""
    step = -(-len(body) // pieces)
    for i in range(0, len(body), step):
        chunk = body[i : i + step]
        out += wire[:3] + len(chunk).to_bytes(2, "big") + chunk
    return out


def _sni_check(data):
    r = subprocess.run([str(ROOT / SNI_CHECK)], input=data, capture_output=True, timeout=WAIT)
    assert r.returncode == 0 and not r.stderr
    return r.stdout.decode().strip()


def test_sni_parser_on_whole_cut_reframed_and_bad_hellos():
    hello = _client_hello("a.test")
    assert _sni_check(hello) == "found a.test"
    assert _sni_check(_reframe(hello, 5)) == "found a.test"  # a ClientHello over five records
    assert _sni_check(_client_hello(None)) == "absent"
    for cut in (0, 3, 5, 6, 100, len(hello) - 1):  # every prefix wants more, none is garbage
        assert _sni_check(hello[:cut]).startswith("more: "), cut
    assert _sni_check(_reframe(hello, 5)[:200]).startswith("more: ")
    assert _sni_check(b"GET / HTTP/1.1\r\n\r\n").startswith("garbage: ")
    assert _sni_check(bytes([22, 3, 1, 0, 4, 2, 0, 0, 0])).startswith("garbage: ")  # a ServerHello
    assert _sni_check(bytes([22, 3, 1, 0x40, 0x01]) + bytes(10)).startswith("garbage: ")  # 2^14 + 1
    assert _sni_check(bytes([22, 3, 1, 0, 5, 1, 0, 0, 1, 3])).startswith("garbage: ")  # cut inside
    # a name with control bytes and a space is printed escaped
    evil = hello.replace(b"a.test", b"a\x1b[m \x07")  # same length: the lengths stay right
    assert _sni_check(evil) == r"found a\x1b[m\x20\x07"


def _ask_named(port, name, text="hello"):
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    with client_ctx().wrap_socket(raw, server_hostname=name, do_handshake_on_connect=False) as tls:
        tls.do_handshake()
        role, pid, reply = Lines(tls).ask(text)
        tls.unwrap().close()
    assert (role, reply) == ("worker", text.upper())
    return pid


def _routes(trace):
    """(sni, worker index, pid of the worker that then received the fd)."""
    out, t = [], read_trace(trace)
    for i, e in enumerate(t):
        if e["role"] == "parent" and e["event"] == "route":
            (got,) = [r for r in t[i:] if r["role"] == "worker" and r["event"] == "received"][:1]
            out.append((e["sni"], e["worker"], got["pid"]))
    return out


def test_route_by_sni_with_python_ssl_under_two_names(serve, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "before-handshake", "--route-by-sni", *ROUTES, "--trace", trace)
    pids = [_ask_named(s.port, n) for n in ("a.test", "b.test", "A.Test", "b.test")]
    assert pids[0] == pids[2] != pids[1] == pids[3]  # case does not matter in a DNS name
    s.stop()
    r = _routes(trace)
    assert [(sni, w) for sni, w, _ in r] == [("a.test", 1), ("b.test", 0), ("A.Test", 1), ("b.test", 0)]
    assert [pid for _, _, pid in r] == pids  # the worker the parent named is the one that answered
    assert all(e["by"] == "route" for e in events(read_trace(trace), "parent", "route"))


def test_route_by_sni_unknown_and_absent_names_go_round_robin(serve, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "before-handshake", "--route-by-sni", *ROUTES, "--trace", trace)
    pids = [_ask_named(s.port, n) for n in (None, "other.test", None, "other.test")]
    assert pids[0] == pids[2] != pids[1] == pids[3]
    s.stop()
    routes = events(read_trace(trace), "parent", "route")
    assert [(e["sni"], e["worker"], e["by"]) for e in routes] == [
        ("-", 0, "round_robin"), ("other.test", 1, "round_robin"),
        ("-", 0, "round_robin"), ("other.test", 1, "round_robin")]


def test_route_by_sni_hello_split_over_records_and_segments(serve, tmp_path):
    """Three records, sent in two TCP writes; the second only once the parent
    has said it is waiting for more. It consumed nothing: the worker's
    OpenSSL reads the whole ClientHello and the handshake completes."""
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "before-handshake", "--route-by-sni", *ROUTES, "--trace", trace)
    c = RawTLS(s.port, handshake=False, name="a.test")
    try:
        with pytest.raises(ssl.SSLWantReadError):
            c.obj.do_handshake()
        wire = _reframe(c.out.read(), 3)
        c.sock.sendall(wire[:150])
        s.wait_line(r"^\[parent \d+\] fd \d+: 150 bytes of ClientHello so far, waiting for ")
        c.sock.sendall(wire[150:])
        c._do(c.obj.do_handshake)
        c.sock.sendall(c.record(b"split\n"))
        m = REPLY.match(c.readline())
        assert m and (m.group(1), m.group(3)) == ("worker", "SPLIT")
    finally:
        c.close()
    s.stop()
    assert _routes(trace) == [("a.test", 1, int(m.group(2)))]
    assert [e["bytes"] for e in events(read_trace(trace), "parent", "sni")] == [150]


def test_route_by_sni_garbage_and_early_close_are_closed(serve, tmp_path):
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "before-handshake", "--route-by-sni", *ROUTES, "--trace", trace)
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as g:
        g.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        try:
            assert g.recv(100) == b""
        except ConnectionResetError:  # closed with our bytes unread: a reset
            pass
    s.wait_line(r"^\[parent \d+\] fd \d+: not a TLS ClientHello \(the first record is not a handshake")
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as e:
        e.sendall(_client_hello("a.test")[:50])
        s.wait_line(r"50 bytes of ClientHello so far")
        e.shutdown(socket.SHUT_WR)
        try:
            assert e.recv(100) == b""
        except ConnectionResetError:
            pass
    s.wait_line(r"^\[parent \d+\] fd \d+ closed before a whole ClientHello")
    assert _ask_named(s.port, "a.test")  # and the server goes on
    s.stop()
    outcomes = [e["outcome"] for e in events(read_trace(trace), "parent", "sni")]
    assert outcomes == ["garbage", "more", "closed"]
    assert len(events(read_trace(trace), "parent", "handoff")) == 1  # only the good one


def test_route_arguments():
    assert "before-handshake" in run(PROG, "--serve", "--route-by-sni", expect=2).stderr
    assert run(PROG, "--serve", "--mode", "before-handshake", "--route-by-sni", "--route", "x=2",
               expect=2).stderr.strip()
    assert run(PROG, "--serve", "--mode", "before-handshake", "--route-by-sni", "--route", "x",
               expect=2).stderr.strip()


def test_a_flood_of_key_updates_gets_unexpected_message(forger):
    """40 KeyUpdates in a row, each under the key the one before it made, and
    no data: the 33rd record without application data is one too many
    (tls_export.h, TLSX_MAX_EMPTY_RECORDS), answered with unexpected_message."""
    c, trace, secret = forger
    seq, flood = 1, b""
    for _ in range(40):
        flood += _forged_record(secret, seq, bytes([24, 0, 0, 1, 0, 22]))  # update_not_requested
        secret, seq = _hkdf_expand_label(secret, b"traffic upd", 32), 0  # RFC 8446 7.2
    c.sock.sendall(flood)
    _alert_from_worker(c, trace, "unexpected_message")
    assert len(events(read_trace(trace), "worker", "peer_key_update")) == 32


def test_read_ahead_demo_visibly_fails_closed(tmp_path):
    """The built-in client sends both lines in one write right after the
    handshake, so read-ahead takes the second record in: the parent refuses
    the handoff and answers both itself (before, this demo showed a handoff
    that worked, as if the switch broke nothing)."""
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--mode", "after-handshake", "--read-ahead", "--trace", trace)
    assert r.result() == {"after-handshake": "kept_by_parent"}
    t = read_trace(trace)
    assert [e["why"] for e in events(t, "parent", "refuse")] == ["read_ahead"]
    assert not events(t, "parent", "handoff") and not events(t, "worker", "received")
    replies = [l for l in r.narration("client") if "got back" in l]
    assert len(replies) == 2 and all("got back \"[parent " in l for l in replies)


def test_a_kept_connection_that_does_not_read_is_dropped(serve, tmp_path):
    """--read-ahead makes the parent keep the connection. A client that sends
    lines and never reads the replies fills its socket buffers; the parent's
    SSL_write then cannot finish, and the parent drops it rather than wait
    (it serves everyone from one loop), and goes on serving others."""
    trace = tmp_path / "t.jsonl"
    s = serve(PROG, "--mode", "after-handshake", "--read-ahead", "--trace", trace)
    c = RawTLS(s.port)
    try:
        c.sock.sendall(c.record(b"one\n") + c.record(b"two\n"))  # refused: the parent keeps it
        assert c.readline().startswith(f"[parent {s.pid}] ONE")
        lines = (b"x" * 1000 + b"\n") * 16  # 16 lines per record
        with pytest.raises((BrokenPipeError, ConnectionResetError)):  # the parent let go (not a timeout)
            for _ in range(100000):  # 1.6 GB at most; the buffers hold a few MB
                c.sock.sendall(c.record(lines))
    finally:
        c.close()
    s.wait_line(r"^\[parent \d+\] the client does not read its replies: closing the connection")
    with connect(s.port, client_ctx()) as tls:  # the parent goes on
        assert Lines(tls).ask("still there?")[:2] == ("parent", s.pid)
        tls.unwrap().close()
    s.stop()
    assert [e["reason"] for e in events(read_trace(trace), "parent", "ended")] == ["not_reading"]
