"""Shared fixtures: build once, run a stage binary, serve and stop it, and
prove from outside that nothing was left behind.

How "nothing left behind" is proven, without sleeps:
  * every binary we start gets the write end of a pipe (the "watch" pipe) in
    its descriptor table and passes it on to every child it forks; once the
    binary and all its descendants have exited, the read end reports EOF. We
    wait for that EOF with a bound;
  * every binary is started in its own session, and after it ends no process
    may remain in its process group;
  * the test process itself must hold the same descriptors after a test as
    before it (a test that forgot to close a socket fails too).

How a child's descriptor table is checked from outside: `fd_table(pid)`
reads /proc/PID/fd and names each entry's kind (a listening TCP socket, a
connection, a Unix socket, a pipe, ...); the `checkpoints` fixture gives a
program `--checkpoint PATH`, where it stops at chosen moments until the test
has read its table (01-basic-fork/checkpoint.h).

Environment: SAN=1 (set by `make check`) runs the sanitizer build in
build-asan/ instead of the in-place binaries. EXERCISE_BUILD=DIR (set by
exercises/grade.py, `make exercise-NN`) runs the binaries already built in
DIR, a build tree where a student's file stands in for a stage's.
"""

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAN = os.environ.get("SAN") == "1"
BUILD_ROOT = Path(os.environ["EXERCISE_BUILD"]) if os.environ.get("EXERCISE_BUILD") else ROOT
OUT = BUILD_ROOT / "build-asan" if SAN else BUILD_ROOT

# Bounds, in seconds. Generous: the sanitizer build is slower, and CI
# machines are small. A test that needs one of them is a failing test.
WAIT = 20.0  # for something that must happen
RUN = 60.0  # for a whole demo run


def binary(rel):
    """Path of a stage binary, e.g. binary("03-scm-rights/scm_rights")."""
    return str(OUT / rel)


@pytest.fixture(scope="session", autouse=True)
def build():
    """Build once per session (a no-op when `make test` already built)."""
    if BUILD_ROOT != ROOT:
        return  # exercises/grade.py built what it runs
    cmd = ["make", "-s", "all"] + (["SAN=1"] if SAN else [])
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=600)


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak_in_test():
    """The test itself must close every socket, pipe and file it opened."""
    before = _open_fds()
    yield
    # listdir opens a descriptor of its own; both snapshots include one.
    leaked = _open_fds() - before
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"the test left descriptors open: {sorted(leaked)}"


def wait_eof(fd, timeout=WAIT):
    """Wait (bounded) until fd reports end-of-file; returns True if it did.
    Data that arrives first is read and discarded."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return False
        if os.read(fd, 65536) == b"":
            return True


def processes_in_group(pgid):
    """PIDs of live (not zombie) processes whose process group is pgid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after the ")" that ends the command name: state ppid pgrp ...
        rest = stat[stat.rindex(")") + 2 :].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            found.append(int(entry))
    return found


class Watch:
    """The watch pipe: hand `wfd` to a process, then `gone()` proves that it
    and every descendant that inherited it have exited."""

    def __init__(self):
        self.rfd, self.wfd = os.pipe()
        os.set_inheritable(self.wfd, True)

    def started(self):
        os.close(self.wfd)
        self.wfd = -1

    def gone(self, timeout=WAIT):
        ok = wait_eof(self.rfd, timeout)
        os.close(self.rfd)
        if self.wfd >= 0:
            os.close(self.wfd)
        return ok


class Result:
    """What a finished run printed and returned."""

    def __init__(self, proc, stdout, stderr):
        self.returncode = proc.returncode
        self.stdout = stdout
        self.stderr = stderr
        self.lines = stdout.splitlines()

    def result(self):
        """The `result: k=v ...` line (last of its kind) as a dict of strings."""
        lines = [l for l in self.lines if l.startswith("result: ")]
        assert lines, f"no result line in:\n{self.stdout}\n{self.stderr}"
        return dict(kv.split("=", 1) for kv in lines[-1][len("result: ") :].split())

    def narration(self, role):
        """Narration lines of one role, without their tag."""
        pat = re.compile(r"^\[" + re.escape(role) + r" \d+\] (.*)$")
        return [m.group(1) for l in self.lines if (m := pat.match(l))]


def check_sanitizer(stderr):
    assert "runtime error:" not in stderr and "Sanitizer" not in stderr, stderr


def run(rel, *args, expect=0, timeout=RUN, env=None, **kw):
    """Run a stage binary to completion, bounded; assert its exit code and
    that it left no process behind. Returns a Result."""
    watch = Watch()
    proc = subprocess.Popen(
        [binary(rel), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        pass_fds=[watch.wfd] + list(kw.pop("pass_fds", [])),
        env=env,
        **kw,
    )
    watch.started()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        watch.gone(1)
        pytest.fail(f"{rel} {' '.join(map(str, args))} did not finish within {timeout} s")
    left = processes_in_group(proc.pid)
    gone = watch.gone()
    assert gone and not left, f"{rel} left processes behind: {left}"
    check_sanitizer(err)
    if expect is not None:
        assert proc.returncode == expect, (
            f"exit {proc.returncode}, expected {expect}\nstdout:\n{out}\nstderr:\n{err}"
        )
    return Result(proc, out, err)


def read_trace(path):
    """A --trace file: one JSON object per line."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Server:
    """A binary started with --serve --port 0. `port` comes from its first
    line; stdout is drained by a thread into `lines` so it never blocks."""

    def __init__(self, rel, args, env=None, pass_fds=()):
        self.watch = Watch()
        self.proc = subprocess.Popen(
            [binary(rel), "--serve", "--port", "0", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=[self.watch.wfd, *pass_fds],
            env=env,
        )
        self.watch.started()
        self.pid = self.proc.pid
        self.lines = []
        self.err_lines = []
        self._line = threading.Condition()
        self.first = self._first_line()
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", self.first)
        if not m:
            self.stop(check=False)
            pytest.fail(f"first line was {self.first!r}, not 'listening on 127.0.0.1:PORT'")
        self.port = int(m.group(1))
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.err_lines), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _first_line(self):
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + WAIT
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([fd], [], [], max(left, 0))
            if not r:
                return buf.decode(errors="replace") + " (timed out)"
            chunk = os.read(fd, 1)  # byte by byte: the rest belongs to the drain thread
            if not chunk:
                return buf.decode(errors="replace") + " (EOF)"
            buf += chunk
        return buf.decode().rstrip("\n")

    def _drain(self, stream, into):
        for raw in stream:
            with self._line:
                into.append(raw.decode(errors="replace").rstrip("\n"))
                self._line.notify_all()

    def wait_line(self, pattern, timeout=WAIT, stream="stdout"):
        """Wait (bounded) for a line matching the regex; returns the match."""
        pat = re.compile(pattern)
        lines = self.lines if stream == "stdout" else self.err_lines
        deadline = time.monotonic() + timeout
        with self._line:
            while True:
                for l in lines:
                    if m := pat.search(l):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._alive_threads():
                    pytest.fail(f"no line matching {pattern!r} in {stream}: {lines[-20:]}")
                self._line.wait(min(left, 0.5))

    def _alive_threads(self):
        return any(t.is_alive() for t in self._threads)

    def stop(self, sig=signal.SIGTERM, check=True):
        """Signal it, wait (bounded), and prove nothing was left behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
            self.watch.gone(1)
            self._close()
            pytest.fail("server did not exit within the bound after SIGTERM")
        left = processes_in_group(self.pid)
        gone = self.watch.gone()
        self._close()
        if check:
            assert gone and not left, f"server left processes behind: {left}"
            assert rc == 0, f"server exited {rc}; stderr: {self.err_lines}"
            check_sanitizer("\n".join(self.err_lines))
        return rc

    def _close(self):
        for t in getattr(self, "_threads", []):
            t.join(WAIT)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def serve():
    """serve(rel, *args) -> Server; every server is stopped and checked at
    teardown (unless the test already stopped it)."""
    started = []

    def start(rel, *args, **kw):
        s = Server(rel, args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.returncode is None:
            s.stop()


def mermaid_of(result):
    """The Mermaid diagram a --mermaid run printed (from `sequenceDiagram` on)."""
    text = result.stdout
    assert "sequenceDiagram" in text, "no diagram in the output"
    return text[text.index("sequenceDiagram") :].strip()


def readme_diagrams(stage_dir):
    """Every ```mermaid block of a stage's README.md, stripped."""
    text = (ROOT / stage_dir / "README.md").read_text()
    return [b.split("```", 1)[0].strip() for b in text.split("```mermaid")[1:]]


# ------------------------------------------------------------ descriptor tables


def socket_kinds():
    """{inode: kind} for the TCP and Unix sockets of this network namespace,
    from /proc/net/{tcp,tcp6,unix}: "tcp-listen", "tcp" (any other state) or
    "unix"."""
    kinds = {}
    for name in ("tcp", "tcp6"):
        with open(f"/proc/net/{name}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                kinds[int(fields[9])] = "tcp-listen" if fields[3] == "0A" else "tcp"
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            kinds[int(line.split()[6])] = "unix"
    return kinds


def _target_kind(target, kinds):
    """(kind, inode) of one /proc/PID/fd link target."""
    if m := re.fullmatch(r"socket:\[(\d+)\]", target):
        return kinds.get(int(m.group(1)), "socket"), int(m.group(1))
    if m := re.fullmatch(r"pipe:\[(\d+)\]", target):
        return "pipe", int(m.group(1))
    if m := re.fullmatch(r"anon_inode:\[?([a-z_]+)\]?", target):
        return m.group(1), None  # "eventpoll", "signalfd", ...
    return "file:" + target, None


def _held_by_test():
    """The link targets of the test process's own descriptors."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


def fd_table(pid, skip=()):
    """What process `pid` holds, read from /proc/PID/fd: {fd: (kind, inode)}.

    kind is "tcp-listen", "tcp", "unix", "pipe", "eventpoll", "signalfd",
    "file:PATH", ...; inode is the socket's or pipe's inode (None otherwise).
    Left out: 0, 1 and 2, the numbers in `skip`, and every object the test
    process holds itself (the watch pipe, the pipes of the program's stdout
    and stderr) - so what remains is what the program opened or inherited
    from its parent. Raises OSError if the process is gone."""
    kinds = socket_kinds()
    mine = _held_by_test()
    table = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        fd = int(name)
        if fd <= 2 or fd in skip:
            continue
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue  # closed while we looked: only possible if it is running
        if target in mine:
            continue
        table[fd] = _target_kind(target, kinds)
    return table


def kinds_of(table):
    """The sorted kinds of a fd_table(): ["pipe", "tcp", "unix"]."""
    return sorted(kind for kind, _ in table.values())


def inodes_of(table, kind):
    """The inodes of one kind in a fd_table()."""
    return sorted(inode for k, inode in table.values() if k == kind)


def read_line_within(sock, timeout=WAIT, cap=4096):
    """One '\\n'-terminated line from a socket, bounded; raises on end-of-file
    or timeout (where a line was expected)."""
    sock.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError(f"end-of-file after {buf!r}, a line was expected")
        buf += chunk
        if len(buf) > cap:
            raise ValueError(f"line longer than {cap} bytes: {buf[:80]!r}...")
    return buf.decode()


class Stop:
    """One stop at a checkpoint: label, pid, and the fd_table() then."""

    def __init__(self, label, pid, table):
        self.label, self.pid, self.table = label, pid, table

    def __repr__(self):
        return f"Stop({self.label!r}, pid={self.pid}, {self.table})"


class Checkpoints:
    """The test's end of `--checkpoint PATH` (01-basic-fork/checkpoint.h).

    A thread accepts one connection per stop, reads "PID FD LABEL", records
    fd_table(PID) (leaving out FD, the connection itself) and answers one
    byte, which lets the process go on. `args` is the option to hand to the
    program; `at(label)` the stops recorded under a label; `errors` anything
    that went wrong in the thread (checked by `close()`)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="cp", dir="/tmp")  # short: sun_path is 108 bytes
        self.path = os.path.join(self.dir, "s")
        self.args = ["--checkpoint", self.path]
        self.stops, self.errors = [], []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(64)
        self._quit_r, self._quit_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            r, _, _ = select.select([self._sock, self._quit_r], [], [])
            if self._quit_r in r:
                return
            conn, _ = self._sock.accept()
            with conn:
                try:
                    pid, fd, label = read_line_within(conn).split()
                    stop = Stop(label, int(pid), fd_table(int(pid), skip={int(fd)}))
                    with self._lock:
                        self.stops.append(stop)
                    conn.sendall(b"k")
                except Exception as e:  # recorded; close() fails the test with it
                    with self._lock:
                        self.errors.append(repr(e))

    def at(self, label):
        with self._lock:
            return [s for s in self.stops if s.label == label]

    def close(self):
        os.write(self._quit_w, b"q")
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "checkpoint thread did not end"
        self._sock.close()
        os.close(self._quit_r)
        os.close(self._quit_w)
        shutil.rmtree(self.dir)
        assert not self.errors, f"checkpoint errors: {self.errors}"


@pytest.fixture
def checkpoints():
    """A Checkpoints (see there), closed and checked at teardown."""
    cp = Checkpoints()
    try:
        yield cp
    finally:
        cp.close()
