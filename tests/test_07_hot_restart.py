"""Stage 07: zero-downtime restart. The server upgrades itself on SIGHUP;
the tests drive real clients through the upgrade and check, from outside,
what each strategy does to them: handoff loses nothing and moves keep-alive
connections to the new generation; stop-start refuses connections in its
gap; reuseport resets what waited in the old accept queue, unless
net.ipv4.tcp_migrate_req=1 migrates it.

Every gap is forced with the --hold test hook (the server stops at the
critical point until the test writes a line on its stdin), never a sleep.
"""

import ctypes
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager

import pytest

from conftest import (
    ROOT, WAIT, Watch, binary, check_sanitizer, mermaid_of, processes_in_group,
    readme_diagrams, run,
)

PROG = "07-hot-restart/hot_restart"
CLONE_NEWNET = 0x40000000


class Gens:
    """A --serve run through its generations. Generation 1 is our child;
    the later ones are its descendants (and orphans once it exits): they are
    found by the pid file and proven gone by the watch pipe and the group."""

    def __init__(self, tmp_path, strategy, *extra, preexec_fn=None):
        self.pid_file = tmp_path / "hr.pid"
        self.watch = Watch()
        self.proc = subprocess.Popen(
            [binary(PROG), "--serve", "--port", "0", "--strategy", strategy,
             "--pid-file", str(self.pid_file), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, pass_fds=[self.watch.wfd], preexec_fn=preexec_fn)
        self.watch.started()
        self.lines, self.err = [], []
        self.cv = threading.Condition()
        self.threads = [threading.Thread(target=self._drain, args=(s, l), daemon=True)
                        for s, l in ((self.proc.stdout, self.lines), (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()
        m = self.wait_line(r"^listening on 127\.0\.0\.1:(\d+)$")
        assert self.lines[0] == m.group(0), "the first line must be 'listening on ...'"
        self.port = int(m.group(1))

    def _drain(self, stream, into):
        for raw in stream:
            with self.cv:
                into.append(raw.decode(errors="replace").rstrip("\n"))
                self.cv.notify_all()

    def wait_line(self, pattern, start=0):
        pat = re.compile(pattern)
        deadline = time.monotonic() + WAIT
        with self.cv:
            while True:
                for l in self.lines[start:]:
                    if m := pat.search(l):
                        return m
                left = deadline - time.monotonic()
                assert left > 0, f"no line matching {pattern!r}: {self.lines[-20:]} {self.err[-5:]}"
                self.cv.wait(min(left, 0.5))

    def master(self):
        return int(self.pid_file.read_text())

    def release(self):
        """Lets a --hold go on."""
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def upgrade(self, gen):
        """SIGHUP to the current master; waits until generation `gen` is ready
        and the old one has exited. Returns the new master's pid."""
        old = self.master()
        os.kill(old, signal.SIGHUP)
        return self.upgrade_done(gen, old)

    def upgrade_done(self, gen, old):
        """Waits until generation `gen` is ready, `old` has exited and the new
        one has read DONE (and closed the upgrade channel)."""
        self.wait_line(rf"^\[gen{gen} \d+\] generation {gen}: ready")
        new = self.master()
        assert new != old
        wait_gone(old)
        self.wait_line(rf"^\[gen{gen} {new}\] the old generation is done")
        return new

    def stop(self):
        os.kill(self.master(), signal.SIGTERM)
        wait_gone(self.master())
        self.proc.wait(timeout=WAIT)
        left = processes_in_group(self.proc.pid)
        gone = self.watch.gone()
        for t in self.threads:
            t.join(WAIT)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.stderr.close()
        assert gone and not left, f"generations left behind: {left}"
        check_sanitizer("\n".join(self.err))


def wait_gone(pid):
    """Bounded wait until pid has exited (a pidfd turns readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        r, _, _ = select.select([fd], [], [], WAIT)
        assert r, f"pid {pid} did not exit"
    finally:
        os.close(fd)


@pytest.fixture
def gens(tmp_path):
    started = []

    def start(strategy, *extra, **kw):
        g = Gens(tmp_path, strategy, *extra, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        if not g.proc.stdout.closed:
            g.stop()


def request(sock, path="/", close=False):
    """One GET on sock; returns (generation, pid) from the body."""
    hdr = "Connection: close\r\n" if close else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{hdr}\r\n".encode())
    buf = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError("closed before a whole response")
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            n = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            if len(body) >= n:
                m = re.fullmatch(rb"served by generation (\d+) pid (\d+)", body[:n])
                assert head.startswith(b"HTTP/1.1 200 "), head
                return int(m.group(1)), int(m.group(2))


def client(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return s


def socket_inodes(pid):
    """socket:[inode] of every descriptor of pid -> {fd: inode}."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            out[int(fd)] = int(t[8:-1])
    return out


def listener_inode(pid, port):
    """The inode of the socket listening on 127.0.0.1:port (/proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":  # 0A = LISTEN
                return int(fields[9])
    return None


# ---- the demo ------------------------------------------------------------

def test_demo_every_request_answered_keepalive_reaches_generation_3():
    r = run(PROG)
    res = r.result()
    assert res["requests"] == res["answered"] and int(res["requests"]) >= 10
    assert res["upgrades"] == "2" and res["failed_upgrades"] == "0"
    assert res["keepalive_generation"] == "3"
    # the half-read request H was finished by the old generation each time
    assert len([l for l in r.narration("gen1") if "not complete, kept in my buffer" in l]) == 1


@pytest.mark.parametrize("how", ["exec", "crash"])
def test_demo_failed_upgrade_loses_nothing(how):
    r = run(PROG, "--fail-upgrade", how)
    res = r.result()
    assert res["failed_upgrades"] == "1" and res["upgrades"] == "2"
    assert res["requests"] == res["answered"]
    assert any("generation 2 failed" in l for l in r.narration("gen1"))


def test_readme_diagram_is_the_demo():
    r = run(PROG, "--mermaid")
    assert readme_diagrams("07-hot-restart") == [mermaid_of(r)]


# ---- handoff under --serve ---------------------------------------------------

def test_handoff_passes_exactly_the_listener_and_idle_connections(gens):
    g = gens("handoff")
    g1 = g.master()
    lst = listener_inode(g1, g.port)
    assert lst in socket_inodes(g1).values()
    keep = [client(g.port) for _ in range(3)]
    try:
        assert [request(s)[0] for s in keep] == [1, 1, 1]
        g2 = g.upgrade(2)
        # the same listening socket (inode), never bound again
        s2 = socket_inodes(g2)
        assert lst in s2.values()
        # exactly the listener and the 3 idle connections, and nothing else
        # but stdio, the test's watch pipe, the signalfd and the spare fd
        table = fd_table(g2)
        sockets = sorted(t for t in table.values() if t.startswith("socket:"))
        assert len(sockets) == 4 and all(_is_tcp(g2, int(t[8:-1])) for t in sockets), table
        others = sorted(t.split(":")[0] for fd, t in table.items() if not t.startswith("socket:"))
        assert others == ["/dev/null", "anon_inode", "pipe", "pipe", "pipe", "pipe"], table
        # the keep-alive clients never reconnected, and reach generation 2
        assert [request(s) for s in keep] == [(2, g2)] * 3
        with client(g.port) as s:
            assert request(s, close=True) == (2, g2)
        g3 = g.upgrade(3)
        assert [request(s) for s in keep] == [(3, g3)] * 3
    finally:
        for s in keep:
            s.close()
    g.stop()


def fd_table(pid):
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def _is_tcp(pid, inode):
    with open(f"/proc/{pid}/net/tcp") as f:
        return any(line.split()[9] == str(inode) for line in f.readlines()[1:])


def test_connections_queued_during_the_upgrade_are_not_lost(gens):
    g = gens("handoff", "--hold", "before-ready")
    os.kill(g.master(), signal.SIGHUP)
    g.wait_line(r"holding before-ready")
    # the new one holds the listener but is not ready; the old still accepts
    socks = [client(g.port) for _ in range(20)]
    try:
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        g.release()
        g.wait_line(r"generation 2: ready")
        gens_seen = []
        for s in socks:
            buf = b""
            while b"pid" not in buf:
                chunk = s.recv(4096)
                assert chunk, "a queued connection was dropped"
                buf += chunk
            gens_seen.append(int(re.search(rb"generation (\d+)", buf).group(1)))
        assert len(gens_seen) == 20
        # once READY, every request on these connections is generation 2's
        assert all(request(s)[0] == 2 for s in socks)
    finally:
        for s in socks:
            s.close()
    g.stop()


def test_sighup_during_an_upgrade_is_refused(gens):
    g = gens("handoff", "--hold", "before-ready")
    g1 = g.master()
    os.kill(g1, signal.SIGHUP)
    g.wait_line(r"holding before-ready")
    os.kill(g1, signal.SIGHUP)
    g.wait_line(r"SIGHUP during an upgrade: refused")
    g.release()
    g.wait_line(r"generation 2: ready")
    wait_gone(g1)
    assert not any("generation 3" in l for l in g.lines)
    g.stop()


def test_upgrade_channel_refuses_a_stranger(gens):
    """Anyone may connect to the old generation's abstract socket; only the
    process it forked (SO_PEERCRED) gets the listener."""
    g = gens("handoff", "--hold", "before-connect")
    g1 = g.master()
    os.kill(g1, signal.SIGHUP)
    g.wait_line(r"holding before-connect")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(WAIT)
        s.connect(f"\0hot-restart.{g1}")
        g.wait_line(r"refused an upgrade peer that is not generation 2: EPERM")
        msg, fds, _, _ = socket.recv_fds(s, 64, 4)
        assert (msg, fds) == (b"", []), "a stranger was sent something"
    g.release()
    g.upgrade_done(2, g1)
    g.stop()


def test_new_generation_dying_while_the_old_drains(gens):
    """The old one keeps its listener (unpolled) until DONE: if the new one
    dies after READY, the old one accepts again, keeps what it still held,
    and names itself in the pid file again."""
    g = gens("handoff")
    g1 = g.master()
    lst = listener_inode(g1, g.port)
    with client(g.port) as h:
        h.sendall(b"GET /half HTTP/1.1\r\n")  # half a request: g1 stays draining
        os.kill(g1, signal.SIGHUP)
        g.wait_line(r"generation 2: ready")
        g.wait_line(r"^\[gen1 \d+\] generation 2 is ready: stopped accepting")
        g2 = g.master()
        os.kill(g2, signal.SIGKILL)
        g.wait_line(r"^\[gen1 \d+\] generation 2 failed")
        assert g.master() == g1
        # the same listening socket as before: never closed, never bound again
        assert lst in socket_inodes(g1).values()
        with client(g.port) as s:
            assert request(s, close=True) == (1, g1)
        h.sendall(b"Host: t\r\n\r\n")
        buf = h.recv(4096)
        assert f"served by generation 1 pid {g1}".encode() in buf
    g.stop()


@pytest.mark.parametrize("how", ["exec", "crash"])
def test_failed_upgrade_leaves_the_old_one_serving(gens, how):
    g = gens("handoff", "--fail-upgrade", how)
    g1 = g.master()
    with client(g.port) as k:
        assert request(k) == (1, g1)
        os.kill(g1, signal.SIGHUP)
        g.wait_line(r"generation 2 failed")
        assert g.master() == g1
        assert request(k) == (1, g1)
        # the switch broke one upgrade: the next one works
        g2 = g.upgrade(2)
        assert request(k) == (2, g2)
    g.stop()


# ---- the naive strategies ------------------------------------------------------

def test_stop_start_refuses_connections_in_the_gap(gens):
    g = gens("stop-start", "--hold", "before-bind")
    with client(g.port) as k:
        assert request(k)[0] == 1
        os.kill(g.master(), signal.SIGHUP)
        g.wait_line(r"holding before-bind")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", g.port), timeout=WAIT).close()
        g.release()
        g.wait_line(r"generation 2: ready")
        g.wait_line(r"^\[gen1 \d+\] closed 1 idle keep-alive connection")
        # the idle keep-alive connection could not be passed on: closed
        with pytest.raises((EOFError, ConnectionResetError, BrokenPipeError)):
            request(k)
    with client(g.port) as s:
        assert request(s)[0] == 2
    g.stop()


def queued_then_closed(g, n=32):
    """Connects n clients while the old generation holds before closing its
    listener (it no longer accepts); returns (served, reset)."""
    os.kill(g.master(), signal.SIGHUP)
    g.wait_line(r"holding before-close")
    socks = [client(g.port) for _ in range(n)]
    served = reset = 0
    try:
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        g.release()
        for s in socks:
            try:
                buf = s.recv(4096)
                if b"served by generation 2" in buf:
                    served += 1
                elif not buf:
                    reset += 1
            except ConnectionResetError:
                reset += 1
    finally:
        for s in socks:
            s.close()
    return served, reset


def test_reuseport_resets_what_waited_in_the_old_queue(gens):
    g = gens("reuseport", "--hold", "before-close")
    served, reset = queued_then_closed(g)
    # SO_REUSEPORT spreads 32 connections over two listeners: the old one's
    # share (all but 2**-32 of the time, some) is reset when it closes.
    assert reset > 0 and served + reset == 32, (served, reset)
    g.stop()


@contextmanager
def netns_with_migrate():
    """A fresh network namespace with lo up and tcp_migrate_req=1; yields a
    function that runs a callable inside it (for sockets and preexec)."""
    name = f"hr07-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=WAIT)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot create a network namespace here: {e}")
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=WAIT)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                        "net.ipv4.tcp_migrate_req=1"], check=True, timeout=WAIT)
        libc = ctypes.CDLL(None, use_errno=True)
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

        def enter():
            assert libc.setns(target, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())

        def leave():
            assert libc.setns(home, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())

        try:
            yield enter, leave
        finally:
            os.close(target)
            os.close(home)
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=WAIT)


def test_reuseport_migrate_resets_nothing(gens):
    with netns_with_migrate() as (enter, leave):
        g = gens("reuseport-migrate", "--hold", "before-close", preexec_fn=enter)
        enter()  # our client sockets are made inside the namespace too
        try:
            served, reset = queued_then_closed(g)
        finally:
            leave()
        assert (served, reset) == (32, 0)
        g.stop()


def test_reuseport_migrate_refuses_without_the_sysctl():
    if open("/proc/sys/net/ipv4/tcp_migrate_req").read().strip() != "0":
        pytest.skip("tcp_migrate_req is on in this namespace")
    r = run(PROG, "--serve", "--strategy", "reuseport-migrate", expect=1)
    assert "tcp_migrate_req" in r.stderr


def test_bad_arguments_exit_2():
    assert run(PROG, "--strategy", "handoff", expect=2).stderr.count("\n") == 1
    assert run(PROG, "--serve", "--strategy", "nope", expect=2).stderr.count("\n") == 1


# ---- measure.py, quickly ------------------------------------------------------------

def test_measure_handoff_loses_nothing_under_load():
    """measure.py (the README's table) with 3 upgrades of the handoff under
    load: no request failed, and every keep-alive client, which never had to
    reconnect, was served last by generation 4."""
    cmd = ["/usr/bin/python3", str(ROOT / "07-hot-restart" / "measure.py"), "--json",
           "--upgrades", "3", "--strategy", "handoff", "--binary", binary(PROG)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.splitlines()[0])
    assert row["upgrades"] == 3 and row["requests"] > 100, row
    assert row["failed"] == 0 and row["keepalive_reconnects"] == 0, row
    assert row["keepalive_last_generation"] == [4] * 4, row
    check_sanitizer(r.stderr)


def test_make_trace_07_shows_the_handoff():
    """Under strace: the exec of the next generation, the listener in an
    SCM_RIGHTS message, received with MSG_CMSG_CLOEXEC."""
    r = subprocess.run(["make", "-s", "trace-07"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'execve("/proc/self/exe"' in r.stderr
    assert re.search(r'sendmsg\(.*"LISTEN \d+".*SCM_RIGHTS', r.stderr)
    assert re.search(r'recvmsg\(.*"LISTEN \d+".*SCM_RIGHTS.*MSG_CMSG_CLOEXEC', r.stderr)
    assert "result: " in r.stdout
