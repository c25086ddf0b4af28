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
    assert {k: exp[k] for k in ("suite", "read_seq", "write_seq", "pending")} == {
        k: res[k] for k in ("suite", "read_seq", "write_seq", "pending")
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
    assert events(t, "parent", "export")[0]["suite"] == suite
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
    def __init__(self, port, keylog=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = client_ctx(keylog).wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.buf = b""
        self._do(self.obj.do_handshake)

    def _flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _do(self, fn, *args):
        while True:
            try:
                r = fn(*args)
                self._flush()
                return r
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if data:
                    self.inc.write(data)
                else:
                    self.inc.write_eof()

    def record(self, data):
        """The TLS record(s) for data, not sent."""
        self.obj.write(data)
        return self.out.read()

    def readline(self):
        while b"\n" not in self.buf:
            self.buf += self._do(self.obj.read, 65536)
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
def test_bad_inner_plaintext_gets_the_right_alert(serve, tmp_path, inner, alert):
    import cryptography  # noqa: F401  (make test installs python3-cryptography)

    trace, keylog = tmp_path / "t.jsonl", tmp_path / "keylog"
    s = serve(PROG, "--mode", "after-handshake", "--ciphersuites", "TLS_AES_128_GCM_SHA256", "--trace", trace)
    c = RawTLS(s.port, keylog)
    try:
        c.sock.sendall(c.record(b"hello\n"))  # record 0 under the client's application key
        assert c.readline().startswith("[parent ")
        (line,) = [l for l in Path(keylog).read_text().splitlines() if l.startswith("CLIENT_TRAFFIC_SECRET_0 ")]
        c.sock.sendall(_forged_record(bytes.fromhex(line.split()[2]), 1, inner))  # record 1
        _alert_from_worker(c, trace, alert)
    finally:
        c.close()


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
    try:
        return "tls" in Path("/proc/sys/net/ipv4/tcp_available_ulp").read_text().split()
    except OSError:
        return False


@pytest.mark.skipif(_kernel_has_tls(), reason="this kernel has kTLS; the fallback is not reachable")
def test_ktls_force_fails_and_auto_falls_back(serve):
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
