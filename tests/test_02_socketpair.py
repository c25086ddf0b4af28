"""Stage 02: the parent<->worker channel (socketpair).

Checked from outside: each side closes the end it does not use (trace),
messages both ways, the worker's end-of-file, two writes read as one on a
stream socket and as two on a seqpacket socket, --keep-unused-end taking
the end-of-file away, and the --serve relay answering through the worker.
"""

import os
import re
import signal
import socket

import pytest

from conftest import WAIT, inodes_of, kinds_of, mermaid_of, read_trace, readme_diagrams, run

PROG = "02-socketpair/socketpair"


def results(r):
    return [dict(kv.split("=", 1) for kv in l[len("result: ") :].split()) for l in r.lines if l.startswith("result: ")]


def test_demo_shows_both_types():
    r = run(PROG)
    by_type = {x["type"]: x for x in results(r)}
    assert by_type["stream"]["reads"] == "1"  # "one"+"two" in one read
    assert by_type["seqpacket"]["reads"] == "2"  # two messages stay two
    assert all(x["eof_seen"] == "1" for x in by_type.values())


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_each_side_closes_the_other_end(tmp_path, kind):
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--type", kind, "--trace", trace)
    t = read_trace(trace)
    (pair,) = [e for e in t if e["event"] == "socketpair"]
    closes = {e["role"]: e["fd"] for e in t if e["event"] == "close"}
    first_parent_close = next(e["fd"] for e in t if e["event"] == "close" and e["role"] == "parent")
    assert first_parent_close == pair["fd1"]  # the parent closes the worker's end
    assert closes["worker"] == pair["fd0"]  # the worker closes the parent's end
    # messages both ways, as many bytes as were written
    writes = [e for e in t if e["event"] == "write"]
    assert {e["role"] for e in writes} == {"parent", "worker"}
    reads = [e for e in t if e["event"] == "read"]
    assert reads[0]["role"] == "worker" and reads[0]["bytes"] == writes[0]["bytes"]
    assert reads[1]["role"] == "parent" and reads[1]["bytes"] == writes[1]["bytes"]
    assert 'read 12 bytes: "hello worker"' in r.narration("worker")
    assert 'read 12 bytes: "hello parent"' in r.narration("parent")
    assert results(r)[0]["eof_seen"] == "1"


@pytest.mark.parametrize("keep", [0, 1], ids=["closed", "keep-unused-end"])
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_demo_descriptor_tables_from_outside(checkpoints, kind, keep):
    """Read from /proc/PID/fd while each side is stopped right after closing
    the end it does not use: one end of the pair each (and its go pipe),
    not the same one - unless the worker was told to keep the parent's."""
    run(PROG, "--type", kind, *(["--keep-unused-end"] if keep else []), *checkpoints.args)
    (parent,) = checkpoints.at("parent")
    (worker,) = checkpoints.at("worker")
    assert kinds_of(parent.table) == ["pipe", "unix"], parent
    p_end = inodes_of(parent.table, "unix")
    if keep:
        # the break-it switch: the worker still holds the parent's end too
        assert kinds_of(worker.table) == ["pipe", "unix", "unix"], worker
        assert set(p_end) < set(inodes_of(worker.table, "unix"))
    else:
        assert kinds_of(worker.table) == ["pipe", "unix"], worker
        assert inodes_of(worker.table, "unix") != p_end


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_keep_unused_end_hides_eof(tmp_path, kind):
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--type", kind, "--keep-unused-end", "--trace", trace)
    (res,) = results(r)
    assert res["eof_seen"] == "0" and res["kept_unused_end"] == "1"
    t = read_trace(trace)
    assert not [e for e in t if e["event"] == "close" and e["role"] == "worker"]
    assert [e for e in t if e["event"] == "eof"][0]["seen"] == 0


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_serve_relays_through_the_worker(serve, kind):
    s = serve(PROG, "--type", kind)
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        f = c.makefile("rb")
        for word in (b"alpha", b"beta"):
            c.sendall(word + b"\n")
            reply = f.readline()
            assert reply.startswith(b"[worker ") and reply.endswith(b"] " + word + b"\n")
        pid = int(reply.split()[1].rstrip(b"]"))
        assert pid != s.pid
        with open(f"/proc/{pid}/stat") as st:
            assert int(st.read().rsplit(")", 1)[1].split()[1]) == s.pid
        f.close()


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_serve_worker_holds_only_its_end(serve, checkpoints, kind):
    """The relay's worker, from outside: its end of the channel and nothing
    else - not the parent's end (or the stop below would need a kill), not
    the listening socket, not the signalfd. Then a clean stop: exit 0,
    which the server gives only when the worker left on end-of-file."""
    s = serve(PROG, "--type", kind, *checkpoints.args)
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"hi\n")
        with c.makefile("rb") as f:
            reply = f.readline()
    assert reply.endswith(b"] hi\n")
    (worker,) = checkpoints.at("worker")
    assert worker.pid == int(reply.split()[1].rstrip(b"]"))
    assert kinds_of(worker.table) == ["unix"], worker
    assert s.stop() == 0


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_serve_long_and_unterminated_lines(serve, kind):
    """A line longer than the relay's buffer, and a last line without '\\n':
    every byte comes back through the worker, and the server stays up."""
    s = serve(PROG, "--type", kind)
    long_line = b"x\0" * 1000  # a NUL byte is data too
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(long_line + b"\nlast words")
        c.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := c.recv(65536):  # until the server closes (timeout: WAIT)
            got += chunk
    # the replies' payloads, without their "[worker PID] " tags and line ends
    assert re.sub(rb"\[worker \d+\] |\n", b"", got) == long_line + b"last words", got
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:  # still serving
        c.sendall(b"again\n")
        with c.makefile("rb") as f:
            assert f.readline().endswith(b"] again\n")


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_readme_diagrams_are_real_runs(kind):
    """One diagram per socket type, each from a fresh run of that type."""
    assert mermaid_of(run(PROG, "--type", kind, "--mermaid")) in readme_diagrams("02-socketpair")


@pytest.mark.parametrize(
    "args", [["--type", "dgram"], ["--serve", "--keep-unused-end"], ["extra"], ["--port", "1"], ["--bogus"]]
)
def test_bad_arguments(args):
    assert run(PROG, *args, expect=2).stderr.count("\n") == 1


def test_runtime_failure_names_the_call():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run(PROG, "--serve", "--port", busy.getsockname()[1], expect=1)
    assert r.stderr.count("\n") == 1 and "listen" in r.stderr and os.strerror(98) in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_serve_ends_cleanly_on_signal_mid_conversation(serve, kind, sig):
    s = serve(PROG, "--type", kind)
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"hi\n")
        assert c.recv(100).endswith(b"] hi\n")  # the parent is in this client's loop
        s.stop(sig)  # exit 0, worker reaped, nothing left behind
        assert c.recv(1) == b""
