"""Stage 01: a child inherits the descriptors its parent had at fork().

Checked from outside: the bytes the client gets back and who sent them, the
same socket inode in the parent (at accept) and the child, the pre-forked
worker that has no descriptor for the connection, and --keep-parent-copy
keeping the connection open after the child closed it.
"""

import os
import select
import socket

from conftest import WAIT, read_trace, run, wait_eof

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


def test_demo_worker_forked_before_accept_has_no_descriptor(tmp_path):
    trace = tmp_path / "t.jsonl"
    run(PROG, "--trace", trace)
    t = read_trace(trace)
    (accept,) = events(t, "parent", "accept")
    (look,) = events(t, "worker", "proc_fd")
    assert look["inode"] == accept["inode"] and look["found"] == 0


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
    return c, _child_pid(server, reply)


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


def test_bad_arguments_exit_2():
    r = run(PROG, "--no-such-switch", expect=2)
    assert r.stderr.strip()
    r = run(PROG, "--port", "5", expect=2)
    assert "--serve" in r.stderr
    r = run(PROG, "--serve", "--port", "99999", expect=2)
    assert run(PROG, "--help").stdout.startswith("usage:")
