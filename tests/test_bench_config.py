"""bench/: nginx, the reference server of `make bench`, is set up to answer
like stage 06's server, so that the two are compared on equal terms.

Checked from outside, as a client: bench/run.py writes nginx's configuration
(bench/nginx.conf.in) and certificate into a temporary directory; `nginx -t`
accepts it; the running nginx has as many workers as stage 06 gets, answers
the same status, content type and body shape over HTTP, and over HTTPS
negotiates the same protocol, cipher suite and key type as `handoff --tls`;
stopping it leaves no process behind.
"""

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import WAIT
from test_06_prefork_server import tls_connect, tls_context, tls_response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import run as bench  # noqa: E402  (bench/run.py)

BODY = re.compile(rb"served by worker (\d+)")


def http_get(port):
    """One GET on a new connection: (status, head, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode(), body


def tls_facts(port):
    """(protocol, cipher suite, curve of the certificate's key, status, body)."""
    with tls_connect(port, tls_context()) as c:
        key = x509.load_der_x509_certificate(c.getpeercert(binary_form=True)).public_key()
        curve = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, body, _ = tls_response(c, bytearray())
        return c.version(), c.cipher()[0], curve, status, body


def content_type(head):
    return re.search(r"(?im)^content-type: *(\S+)", head).group(1)


@pytest.fixture
def nginx(tmp_path):
    p, http_port, https_port = bench.start_nginx(tmp_path)
    yield p, http_port, https_port
    bench.stop(p)
    assert not bench.in_group(p.pid), "nginx left processes behind"


def test_nginx_accepts_the_generated_config(tmp_path):
    cmd = bench.nginx_prepare(tmp_path, bench.NCPU, *bench.free_ports(2))
    out = subprocess.run([str(c) for c in cmd] + ["-t"], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr


def test_nginx_answers_like_stage_06(nginx, serve):
    p, http_port, _ = nginx
    assert len(bench.children(p.pid)) == bench.NCPU
    ours = serve("06-prefork-server/handoff_server", "--model", "handoff", "--workers", bench.NCPU)
    for port in (http_port, ours.port):
        status, head, body = http_get(port)
        assert status == 200 and content_type(head) == "text/plain"
        assert BODY.fullmatch(body), body
        assert int(re.search(r"(?im)^content-length: *(\d+)", head).group(1)) == len(body)
    # nginx's worker wrote it: the pid in the body is one of the master's children
    pid = int(BODY.fullmatch(http_get(http_port)[2]).group(1))
    assert pid in bench.children(p.pid)


def test_nginx_https_negotiates_what_handoff_tls_does(nginx, serve):
    _, _, https_port = nginx
    ours = serve("06-prefork-server/handoff_server", "--model", "handoff", "--workers", bench.NCPU, "--tls")
    theirs, mine = tls_facts(https_port), tls_facts(ours.port)
    assert theirs[:3] == mine[:3] == ("TLSv1.3", theirs[1], "secp256r1")
    for facts in (theirs, mine):
        assert facts[3] == 200 and BODY.fullmatch(facts[4])
