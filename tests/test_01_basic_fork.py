"""Stage 01: a child inherits the descriptors its parent had at fork().

Checked from outside: the bytes the client gets back and who sent them, the
same socket inode in the parent (at accept) and the child, the pre-forked
worker that has no descriptor for the connection, and --keep-parent-copy
keeping the connection open after the child closed it.
"""

import os
import re
import select
import signal
import socket

import pytest

from conftest import WAIT, inodes_of, kinds_of, mermaid_of, read_trace, readme_diagrams, run, wait_eof

PROG = "01-basic-fork/basic_fork"


def events(trace, role=None, event=None):
    return [e for e in trace if (role is None or e["role"] == role) and (event is None or e["event"] == event)]


def test_demo_child_serves_the_inherited_descriptor(tmp_path):
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--trace", trace)
    t = read_trace(trace)
    (accept,) = events(t, "parent", "accept")
    (inherited,) = events(t, "child", "inherited")
    # the same descriptor number and the same kernel socket, in another process
    assert inherited["fd"] == accept["fd"]
    assert inherited["inode"] == accept["inode"]
    assert inherited["pid"] != accept["pid"]
    # the echoes were written by the child, and the client got them
    child_pid = inherited["pid"]
    replies = [l for l in r.narration("client") if "got back" in l]
    assert len(replies) == 2
    assert all(f'"[child {child_pid}] ' in l for l in replies)
    # the parent closed its copy, so the client saw end-of-file
    assert events(t, "parent", "close")[0]["fd"] == accept["fd"]
    assert events(t, "client", "eof") == [{**events(t, "client", "eof")[0], "seen": 1}]
    assert r.result() == {"eof_seen": "1", "parent_kept_copy": "0"}


def _story(r, role):
    """One role's narration with the numbers that change from run to run
    (pids, ports, inodes) blanked."""
    return [re.sub(r"\d{3,}", "N", l) for l in r.narration(role)]


def test_demo_what_is_fixed_in_every_run(tmp_path):
    """What the README promises: each process tells the same lines in the
    same order in every run, and the steps forced by the pipe come in order
    on stdout (one write(2) per line, so stdout order is the order of the
    writes): the client sends only after the parent closed its copy, and
    looks for end-of-file only after the parent saw the child exit."""
    runs, traces = [], []
    for i in range(3):
        runs.append(run(PROG, "--trace", tmp_path / f"t{i}.jsonl"))
        traces.append(read_trace(tmp_path / f"t{i}.jsonl"))
    for role in ("parent", "worker", "client", "child"):
        stories = [_story(r, role) for r in runs]
        assert stories[0] and all(s == stories[0] for s in stories), role
    for r, t in zip(runs, traces):
        # the trace is appended in the order things happened (O_APPEND)
        at = lambda role, event: next(i for i, e in enumerate(t) if e["role"] == role and e["event"] == event)
        assert at("parent", "close") < at("client", "send")
        line = lambda pat: next(i for i, l in enumerate(r.lines) if re.search(pat, l))
        assert line(r"^\[parent \d+\] child \d+ exited") < line(r"^\[client \d+\] read\(\) -> 0")


def test_demo_worker_forked_before_accept_has_no_descriptor(tmp_path):
    trace = tmp_path / "t.jsonl"
    run(PROG, "--trace", trace)
    t = read_trace(trace)
    (accept,) = events(t, "parent", "accept")
    (look,) = events(t, "worker", "proc_fd")
    assert look["inode"] == accept["inode"] and look["found"] == 0


@pytest.mark.parametrize("args", [[], ["--keep-parent-copy"]])
def test_demo_descriptor_tables_from_outside(tmp_path, checkpoints, args):
    """Each child holds what it should and nothing it inherited by mistake:
    the early worker only its pipe, the client its connection and its pipe,
    the serving child only the accepted connection - no listening socket."""
    trace = tmp_path / "t.jsonl"
    run(PROG, *args, *checkpoints.args, "--trace", trace)
    t = read_trace(trace)
    (accept,) = events(t, "parent", "accept")
    (early,) = checkpoints.at("early-worker")
    (client,) = checkpoints.at("client")
    (child,) = checkpoints.at("child")
    trace_file = f"file:{trace}"
    for stop in (early, client, child):
        stop.table = {fd: k for fd, k in stop.table.items() if k[0] != trace_file}
    assert kinds_of(early.table) == ["pipe"], early
    assert kinds_of(client.table) == ["pipe", "tcp"], client
    assert kinds_of(child.table) == ["tcp"], child
    assert inodes_of(child.table, "tcp") == [accept["inode"]]
    assert child.pid == events(t, "child", "inherited")[0]["pid"]


def test_keep_parent_copy_client_never_sees_eof(tmp_path):
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--keep-parent-copy", "--trace", trace)
    t = read_trace(trace)
    (eof,) = events(t, "client", "eof")
    assert eof["seen"] == 0
    assert r.result() == {"eof_seen": "0", "parent_kept_copy": "1"}
    # and the narration names the reference that kept it open
    assert any("still socket:[" in l for l in r.narration("parent"))


def _server_side_inode(client):
    """The inode of the server's end of `client`, from /proc/net/tcp."""
    lport = client.getsockname()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == lport and local_port == client.getpeername()[1]:
                return int(fields[9])
    raise AssertionError("server end not found in /proc/net/tcp")


def _holders(pids, inode):
    want = f"socket:[{inode}]"
    out = []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                    out.append(pid)
            except OSError:
                pass
    return out


def _child_pid(server, reply):
    pid = int(reply.split()[1].rstrip("]"))
    with open(f"/proc/{pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == server.pid  # its parent
    return pid


def _echo_then_half_close(server):
    c = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    c.sendall(b"ping\n")
    reply = c.makefile("rb").readline().decode()
    assert reply.startswith("[child ") and reply.endswith("] ping\n")
    child = _child_pid(server, reply)
    # the server says so only after it has closed (or kept) its copy
    server.wait_line(rf"child {child} serves it")
    return c, child


@pytest.mark.parametrize("args", [[], ["--keep-parent-copy"]])
def test_serve_child_holds_only_its_connection(serve, checkpoints, args):
    """Checked from outside while the child is stopped at its checkpoint: the
    connection it serves, and no listening socket, signalfd, spare
    descriptor or connection of a sibling."""
    s = serve(PROG, *args, *checkpoints.args)
    c1, child1 = _echo_then_half_close(s)
    c2, child2 = _echo_then_half_close(s)
    with c1, c2:
        stops = {st.pid: st for st in checkpoints.at("child")}
        for c, child in ((c1, child1), (c2, child2)):
            table = stops[child].table
            assert kinds_of(table) == ["tcp"], table
            assert inodes_of(table, "tcp") == [_server_side_inode(c)]
    s.stop()


def test_serve_parent_closes_its_copy(serve):
    s = serve(PROG)
    c, child = _echo_then_half_close(s)
    with c:
        inode = _server_side_inode(c)
        assert _holders([s.pid, child], inode) == [child]
        pidfd = os.pidfd_open(child)
        c.shutdown(socket.SHUT_WR)
        # the child exits, and then end-of-file arrives
        assert select.select([pidfd], [], [], WAIT)[0]  # a pidfd polls readable at exit
        os.close(pidfd)
        assert wait_eof(c.fileno())


def test_serve_keep_parent_copy_no_eof(serve):
    s = serve(PROG, "--keep-parent-copy")
    c, child = _echo_then_half_close(s)
    with c:
        inode = _server_side_inode(c)
        assert sorted(_holders([s.pid, child], inode)) == sorted([s.pid, child])
        pidfd = os.pidfd_open(child)
        c.shutdown(socket.SHUT_WR)
        assert select.select([pidfd], [], [], WAIT)[0]  # the child has exited
        os.close(pidfd)
        assert _holders([s.pid], inode) == [s.pid]  # the parent still holds it
        c.settimeout(1.0)
        try:
            data = c.recv(1)
        except socket.timeout:
            data = None
        assert data is None, "end-of-file although the parent kept its copy"


def test_serve_children_do_not_inherit_each_others_connections(serve):
    """With --keep-parent-copy the parent holds every connection; a child
    forked later must not hold its siblings' connections too."""
    s = serve(PROG, "--keep-parent-copy")
    c1, child1 = _echo_then_half_close(s)
    c2, child2 = _echo_then_half_close(s)
    with c1, c2:
        inode1 = _server_side_inode(c1)
        assert sorted(_holders([s.pid, child1, child2], inode1)) == sorted([s.pid, child1])


def test_serve_echoes_bytes_as_they_came(serve):
    """A NUL byte and a line longer than the child's buffer come back whole
    (a line cut short gets a '\\n' of its own)."""
    s = serve(PROG)
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c, c.makefile("rb") as f:
        c.sendall(b"a\0b\n" + b"y" * 1000 + b"\n")
        assert f.readline().endswith(b"] a\0b\n")
        assert re.sub(rb"\[child \d+\] |\n", b"", f.readline() + f.readline()) == b"y" * 1000


@pytest.mark.parametrize("args", [[], ["--keep-parent-copy"]])
def test_readme_diagrams_are_real_runs(args):
    assert mermaid_of(run(PROG, *args, "--mermaid")) in readme_diagrams("01-basic-fork")


def test_bad_arguments_exit_2():
    r = run(PROG, "--no-such-switch", expect=2)
    assert r.stderr.count("\n") == 1
    r = run(PROG, "--port", "5", expect=2)
    assert "--serve" in r.stderr and r.stderr.count("\n") == 1
    r = run(PROG, "--serve", "--port", "99999", expect=2)
    assert r.stderr.count("\n") == 1
    assert run(PROG, "--help").stdout.startswith("usage:")


def test_runtime_failure_names_the_call():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run(PROG, "--serve", "--port", busy.getsockname()[1], expect=1)
    assert r.stderr.count("\n") == 1 and "listen" in r.stderr and os.strerror(98) in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_ends_cleanly_on_signal_with_a_client_connected(serve, sig):
    s = serve(PROG)
    c, child = _echo_then_half_close(s)
    with c:
        s.stop(sig)  # exit 0, the child reaped too, nothing left behind
        assert c.recv(1) == b""
