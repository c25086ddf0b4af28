"""Stage 03, interop: `scm_rights send` and `scm_rights recv` against other
peers - Python's raw socket API and its socket.send_fds/recv_fds - and
against hostile senders.

The receiver is run as a user would run it: `scm_rights recv --unix PATH`,
which announces `scm_rights: listening on PATH` on stderr and then prints one
`received fd=N kind=K dev=D ino=I` line per descriptor (plus `content: ...`
for a regular file) and closes it. Every descriptor it got is proven closed
from outside while it still runs:
  * a pipe's write end: the test closes its own copy after sendmsg, so the
    read end reports EOF exactly when the receiver (or the kernel, for the
    ones a truncated control buffer had no room for) closed the last one;
  * a socket: the same, on the other end of a socketpair;
  * a directory, a regular file, an eventfd: once a later connection has
    been served (connections are served one after another), no entry of
    /proc/PID/fd of the receiver may still point at them.
Nothing sleeps: every step waits, bounded, for an output line or an EOF.
"""

import array
import fcntl
import os
import re
import resource
import select
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import WAIT, Watch, binary, check_sanitizer, processes_in_group, run, wait_eof

PROG = "03-scm-rights/scm_rights"
SCM_MAX_FD = 253

RECEIVED = re.compile(r"received fd=(\d+) kind=(socket|file|pipe|dir|other) dev=(\d+) ino=(\d+)")
CONTENT = re.compile(r"content: (.*)")
ERRORS = {
    "nofd": "error: no descriptor in message",
    "toomany": "error: more descriptors than allowed",
    "ctrunc": "error: control data truncated (MSG_CTRUNC)",
}


# ---------------------------------------------------------------- helpers


class Fds:
    """Descriptors the test owns; whatever is still open at teardown is
    closed (so a failing assertion does not also fail the leak check)."""

    def __init__(self):
        self.owned = set()

    def add(self, fd):
        self.owned.add(fd)
        return fd

    def pipe(self):
        r, w = os.pipe()
        self.owned |= {r, w}
        return r, w

    def pipes(self, n):
        return [self.pipe() for _ in range(n)]

    def close(self, *fds):
        for fd in fds:
            self.owned.remove(fd)
            os.close(fd)

    def close_all(self):
        for fd in self.owned:
            os.close(fd)
        self.owned.clear()


@pytest.fixture
def fds():
    f = Fds()
    yield f
    f.close_all()


def ident(fd):
    """(dev, ino) of an open descriptor, as the receiver must print them."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def sendmsg_fds(sock, payload, fd_list):
    """One raw sendmsg(2) carrying fd_list in one SCM_RIGHTS control message;
    whatever part of the payload the kernel did not take is sent after it
    (without descriptors: on a stream socket that is the rest of the same
    message). Returns nothing; raises if anything failed."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fd_list))] if fd_list else []
    n = sock.sendmsg([payload], anc)
    assert n >= 1
    if n < len(payload):
        sock.sendall(payload[n:])


def assert_eof_all(read_ends, fds):
    """Every pipe read end reaches EOF (bounded): the last copy of each write
    end is closed. Closes the read ends."""
    for r in read_ends:
        assert wait_eof(r), f"pipe read end {r}: its write end is still open somewhere"
        fds.close(r)


class Receiver:
    """`scm_rights recv --unix PATH ARGS...`, running in its own session,
    with stdout and stderr drained by threads into `lines` and `err_lines`."""

    def __init__(self, path, args):
        self.path = str(path)
        self.args = [str(a) for a in args]
        self.watch = Watch()
        self.proc = subprocess.Popen(
            [binary(PROG), "recv", "--unix", self.path, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=[self.watch.wfd],
        )
        self.watch.started()
        self.pid = self.proc.pid
        self.lines = []
        self.err_lines = []
        self._cv = threading.Condition()
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.err_lines), daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.done = False
        self.listening = f"scm_rights: listening on {self.path}"
        self.wait_until(lambda: self.listening in self.err_lines, "the 'listening on' line")
        assert self.err_lines == [self.listening], self.err_lines
        assert self.lines == [], self.lines

    def _drain(self, stream, into):
        for raw in stream:
            with self._cv:
                into.append(raw.decode(errors="replace").rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_until(self, cond, what, timeout=WAIT):
        """Wait (bounded) until cond() holds; cond reads lines/err_lines."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not cond():
                left = deadline - time.monotonic()
                ended = self.proc.poll() is not None and not any(t.is_alive() for t in self._threads)
                if left <= 0 or ended:
                    pytest.fail(
                        f"waited for {what}; receiver {'exited' if ended else 'still running'}\n"
                        f"stdout: {self.lines[-20:]}\nstderr: {self.err_lines[-20:]}"
                    )
                self._cv.wait(min(left, 0.5))

    # what it printed
    def received(self):
        """[(fd, kind, dev, ino)] of every `received` line so far."""
        with self._cv:
            out = []
            for l in self.lines:
                if m := RECEIVED.fullmatch(l):
                    out.append((int(m[1]), m[2], int(m[3]), int(m[4])))
            return out

    def errors(self):
        with self._cv:
            return [l for l in self.err_lines if l.startswith("error: ")]

    def wait_received(self, n):
        """Wait until there are at least n `received` lines; returns them all."""
        self.wait_until(lambda: len(self.received()) >= n, f"{n} 'received' lines")
        return self.received()

    def wait_error(self, n=1):
        self.wait_until(lambda: len(self.errors()) >= n, f"{n} 'error:' lines on stderr")
        return self.errors()

    # talking to it
    def connect(self):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(WAIT)
        c.connect(self.path)
        return c

    def holds(self, targets):
        """The entries of /proc/PID/fd that point at one of `targets`
        (readlink texts: a path, 'socket:[INO]', 'anon_inode:[eventfd]')."""
        found = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                t = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            if t in targets:
                found.append((fd, t))
        return found

    # ending it
    def _finish(self, rc, check=True):
        left = processes_in_group(self.pid)
        gone = self.watch.gone()
        for t in self._threads:
            t.join(WAIT)
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.done = True
        if not check:
            return
        check_sanitizer("\n".join(self.err_lines))
        assert gone and not left, f"recv left processes behind: {left}"
        assert rc == 0, f"recv exited {rc}; stderr: {self.err_lines}"
        assert not os.path.exists(self.path), "recv did not remove its socket file"
        # stdout holds only what the specification lists, stderr too
        for i, l in enumerate(self.lines):
            assert RECEIVED.fullmatch(l) or (
                CONTENT.fullmatch(l) and i > 0 and RECEIVED.fullmatch(self.lines[i - 1])
            ), f"unexpected stdout line {l!r}"
        for l in self.err_lines:
            assert l == self.listening or l.startswith("error: "), f"unexpected stderr line {l!r}"

    def stop(self, sig=signal.SIGTERM):
        """Signal it, wait (bounded), check exit 0, socket file removed,
        nothing left behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
            self._finish(None, check=False)
            pytest.fail(f"recv did not exit within {WAIT} s of signal {sig}")
        self._finish(rc)

    def exited(self):
        """It must end by itself (--count): wait, bounded, then check."""
        try:
            rc = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail("recv --count did not exit by itself")
        self._finish(rc)


@pytest.fixture
def receiver(tmp_path):
    """receiver(*args) -> a running Receiver on tmp_path/r.sock; stopped
    with SIGTERM and checked at teardown unless the test ended it."""
    started = []

    def start(*args, path=None):
        r = Receiver(path or tmp_path / "r.sock", args)
        started.append(r)
        return r

    yield start
    for r in started:
        if not r.done:
            r.stop()


def serving_goes_on(rx, fds):
    """A normal message (Python's socket.send_fds, one pipe write end) on a
    fresh connection is served. Connections are served one after another,
    so once this is done, everything sent before has been handled."""
    r, w = fds.pipe()
    want = ("pipe", *ident(w))
    with rx.connect() as c:
        assert socket.send_fds(c, [b"."], [w]) == 1
    fds.close(w)
    rx.wait_until(lambda: want in [x[1:] for x in rx.received()], "the normal message's line")
    # stdout is one ordered stream: nothing that came before can follow it
    assert [x[1:] for x in rx.received()].index(want) == len(rx.received()) - 1
    assert_eof_all([r], fds)


# ------------------------------------------------- the hostile-sender matrix


def test_no_descriptor_in_message(receiver, fds):
    rx = receiver()
    with rx.connect() as c:
        c.sendall(b"x")  # the first data on the connection, and no control message at all
        errs = rx.wait_error()
        assert errs[0].startswith(ERRORS["nofd"]), errs
    serving_goes_on(rx, fds)
    rx.stop()  # once it has exited, all its output is in
    assert len(rx.errors()) == 1 and rx.errors()[0].startswith(ERRORS["nofd"])
    assert len(rx.received()) == 1  # only the normal message's descriptor


@pytest.mark.parametrize("max_fds,sent", [(1, 2), (3, 4), (15, 16)])
def test_more_descriptors_than_allowed(receiver, fds, max_fds, sent):
    """On a 64-bit ABI CMSG_SPACE(M * sizeof(int)) rounds up to 8 bytes: with an odd M there
    is room for M + 1 ints, so the kernel installs one more than allowed
    and does NOT set MSG_CTRUNC. The receiver must count, refuse, and close
    all of them."""
    rx = receiver("--max-fds", max_fds)
    pipes = fds.pipes(sent)
    with rx.connect() as c:
        sendmsg_fds(c, b"x", [w for _, w in pipes])
        fds.close(*(w for _, w in pipes))
        errs = rx.wait_error()
        assert errs[0].startswith(ERRORS["toomany"]), errs
        # every one of them, installed by the kernel, closed by the receiver
        assert_eof_all([r for r, _ in pipes], fds)
    serving_goes_on(rx, fds)
    rx.stop()  # once it has exited, all its output is in
    assert len(rx.errors()) == 1
    assert len(rx.received()) == 1  # nothing of the rejected message was reported


@pytest.mark.parametrize("max_fds,sent", [(None, 17), (None, 20), (1, 3), (None, SCM_MAX_FD)])
def test_control_data_truncated(receiver, fds, max_fds, sent):
    """More than fits in CMSG_SPACE(M * sizeof(int)): the kernel installs
    what fits, closes the rest and sets MSG_CTRUNC; the receiver closes the
    installed ones. Default M is 16."""
    rx = receiver(*(["--max-fds", max_fds] if max_fds else []))
    pipes = fds.pipes(sent)
    with rx.connect() as c:
        sendmsg_fds(c, b"x", [w for _, w in pipes])
        fds.close(*(w for _, w in pipes))
        errs = rx.wait_error()
        assert errs[0].startswith(ERRORS["ctrunc"]), errs
        assert_eof_all([r for r, _ in pipes], fds)
    serving_goes_on(rx, fds)
    rx.stop()  # once it has exited, all its output is in
    assert len(rx.errors()) == 1
    assert len(rx.received()) == 1


@pytest.mark.parametrize("classic", [True, False], ids=["classic-receiver", "fdpass_recv"])
def test_two_descriptors_to_a_receiver_built_for_one(receiver, fds, classic):
    """The receiver the article leaves to the reader, as the classic books
    write it (`recv --classic-receiver`): a control buffer of
    CMSG_SPACE(sizeof(int)) and a check that cmsg_len is
    CMSG_LEN(sizeof(int)). Sent two descriptors: on a 64-bit ABI both fit in
    the padding, no MSG_CTRUNC, the length check says "no descriptor" - and
    both stay open in the receiver: no EOF on their read ends while it
    lives, EOF once it has exited. fdpass_recv, allowed one, counts from
    cmsg_len, refuses, and closes both at once."""
    rx = receiver("--classic-receiver") if classic else receiver("--max-fds", 1)
    pipes = fds.pipes(2)
    targets = {f"pipe:[{ident(w)[1]}]" for _, w in pipes}
    with rx.connect() as c:
        sendmsg_fds(c, b"x", [w for _, w in pipes])
    fds.close(*(w for _, w in pipes))
    errs = rx.wait_error()
    assert errs[0].startswith(ERRORS["nofd" if classic else "toomany"]), errs
    serving_goes_on(rx, fds)  # served one after another: the first connection is done
    if classic:
        # the leak, seen from outside: both write ends still open in the receiver
        assert select.select([r for r, _ in pipes], [], [], 0)[0] == []
        assert {t for _, t in rx.holds(targets)} == targets
        rx.stop()  # its exit closes what it leaked
    else:
        assert rx.holds(targets) == []
    assert_eof_all([r for r, _ in pipes], fds)


def test_253_descriptors_in_one_message(receiver, fds):
    rx = receiver("--max-fds", SCM_MAX_FD)
    pipes = fds.pipes(SCM_MAX_FD)
    want = sorted(ident(w) for _, w in pipes)
    with rx.connect() as c:
        sendmsg_fds(c, b"x", [w for _, w in pipes])
        fds.close(*(w for _, w in pipes))
        got = rx.wait_received(SCM_MAX_FD)
    assert len(got) == SCM_MAX_FD
    assert {k for _, k, _, _ in got} == {"pipe"}
    assert sorted((d, i) for _, _, d, i in got) == want
    assert len({fd for fd, _, _, _ in got}) == SCM_MAX_FD  # all installed at once
    assert_eof_all([r for r, _ in pipes], fds)
    serving_goes_on(rx, fds)
    rx.stop()  # once it has exited, all its output is in
    assert rx.errors() == []


def test_messages_one_after_another_on_one_connection(receiver, fds):
    """Bytes without descriptors after a message with descriptors are the
    rest of that message on a stream socket: dropped silently, no error;
    the next message with descriptors on the same connection is served."""
    rx = receiver()
    (r1, w1), (r2, w2) = fds.pipes(2)
    want = [ident(w1), ident(w2)]
    with rx.connect() as c:
        sendmsg_fds(c, b"x", [w1])
        fds.close(w1)
        rx.wait_received(1)
        c.sendall(b"tail of the first message" * 1000)
        sendmsg_fds(c, b"y", [w2])
        fds.close(w2)
        got = rx.wait_received(2)
    assert [(d, i) for _, _, d, i in got] == want
    assert_eof_all([r1, r2], fds)
    serving_goes_on(rx, fds)
    rx.stop()  # once it has exited, all its output is in
    assert rx.errors() == []


def test_peer_disconnects_right_after_sending(receiver, fds):
    rx = receiver()
    pipes = fds.pipes(3)
    want = [ident(w) for _, w in pipes]
    c = rx.connect()
    sendmsg_fds(c, b"x", [w for _, w in pipes])
    c.close()  # gone before the receiver even read: the message is still queued
    fds.close(*(w for _, w in pipes))
    got = rx.wait_received(3)
    assert [(d, i) for _, _, d, i in got] == want  # in the order they were sent
    assert_eof_all([r for r, _ in pipes], fds)
    serving_goes_on(rx, fds)
    rx.stop()  # once it has exited, all its output is in
    assert rx.errors() == []


def test_peer_sends_its_own_end_of_the_connection(receiver, fds):
    """The sender passes the very socket it is talking through, then closes
    its copy: the connection reaches end-of-file only once the receiver has
    closed that descriptor. A receiver that kept it would wait for its idle
    timeout instead of serving the next connection within the bound."""
    rx = receiver()
    c = rx.connect()
    want = ident(c.fileno())
    sendmsg_fds(c, b"x", [c.fileno()])
    c.close()
    got = rx.wait_received(1)
    assert got[0][1:] == ("socket", *want)
    serving_goes_on(rx, fds)
    assert rx.holds({f"socket:[{want[1]}]"}) == []
    rx.stop()  # once it has exited, all its output is in
    assert rx.errors() == []


def test_large_payload_with_one_descriptor(receiver, fds):
    """256 KiB of payload: the descriptor travels with the first bytes; the
    rest of the stream is the same message's payload, read and dropped."""
    rx = receiver()
    r, w = fds.pipe()
    want = ident(w)
    payload = bytes(range(256)) * 1024
    with rx.connect() as c:
        sendmsg_fds(c, payload, [w])  # sends the rest too, while recv reads
        fds.close(w)
        got = rx.wait_received(1)
        assert got[0][1:] == ("pipe", *want)
        assert_eof_all([r], fds)
    serving_goes_on(rx, fds)
    rx.stop()  # once it has exited, all its output is in
    assert rx.errors() == []
    assert len(rx.received()) == 2


def test_directory(receiver, fds, tmp_path):
    rx = receiver()
    d = tmp_path / "adir"
    d.mkdir()
    dfd = fds.add(os.open(d, os.O_RDONLY | os.O_DIRECTORY))
    want = ident(dfd)
    with rx.connect() as c:
        assert socket.send_fds(c, [b"."], [dfd]) == 1
    fds.close(dfd)
    got = rx.wait_received(1)
    assert got[0][1:] == ("dir", *want)
    serving_goes_on(rx, fds)
    # no content line for a directory: the next line is the next descriptor's
    assert RECEIVED.fullmatch(rx.lines[1])
    assert rx.holds({str(d.resolve())}) == []
    rx.stop()
    assert rx.errors() == []


def test_regular_file_and_its_first_line(receiver, fds, tmp_path):
    """content comes from pread at offset 0: the sender's file offset (shared
    through the open file description) is at the end, and stays there."""
    rx = receiver()
    f = tmp_path / "hello.txt"
    f.write_bytes(b"first line of the file\nsecond line\n")
    ffd = fds.add(os.open(f, os.O_RDONLY))
    end = os.lseek(ffd, 0, os.SEEK_END)
    want = ident(ffd)
    with rx.connect() as c:
        assert socket.send_fds(c, [b"."], [ffd]) == 1
    got = rx.wait_received(1)
    assert got[0][1:] == ("file", *want)
    rx.wait_until(lambda: len(rx.lines) >= 2, "the content line")
    assert rx.lines[1] == "content: first line of the file"
    serving_goes_on(rx, fds)
    assert os.lseek(ffd, 0, os.SEEK_CUR) == end  # pread did not move the shared offset
    fds.close(ffd)
    assert rx.holds({str(f.resolve())}) == []
    rx.stop()  # once it has exited, all its output is in
    assert rx.errors() == []


def test_socket(receiver, fds):
    rx = receiver()
    a, b = socket.socketpair()
    with b:
        with a:
            want = ident(a.fileno())
            with rx.connect() as c:
                sendmsg_fds(c, b"x", [a.fileno()])
        # our copy of `a` is closed: b sees EOF once the receiver closed its copy
        got = rx.wait_received(1)
        assert got[0][1:] == ("socket", *want)
        assert wait_eof(b.fileno())
    serving_goes_on(rx, fds)
    rx.stop()  # once it has exited, all its output is in
    assert rx.errors() == []


def test_other_kind_eventfd(receiver, fds):
    rx = receiver()
    efd = fds.add(os.eventfd(0))
    want = ident(efd)
    with rx.connect() as c:
        sendmsg_fds(c, b"x", [efd])
    got = rx.wait_received(1)
    assert got[0][1:] == ("other", *want)
    serving_goes_on(rx, fds)
    fds.close(efd)
    # after the sentinel was served, no eventfd remains in the receiver
    assert rx.holds({"anon_inode:[eventfd]"}) == []
    rx.stop()
    assert rx.errors() == []


def test_mixed_message_in_order(receiver, fds, tmp_path):
    """One message with a file, a directory, a socket and a pipe: one line
    each, in the order they were sent, a content line right after the file."""
    rx = receiver()
    f = tmp_path / "f.txt"
    f.write_bytes(b"only line")  # no newline at all: the line is all of it
    ffd = fds.add(os.open(f, os.O_RDONLY))
    dfd = fds.add(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    r, w = fds.pipe()
    a, b = socket.socketpair()
    with a, b:
        order = [ffd, dfd, a.fileno(), w]
        want = [ident(x) for x in order]
        with rx.connect() as c:
            sendmsg_fds(c, b"x", order)
        fds.close(w)
        a.close()
        got = rx.wait_received(4)
        assert [(k, d, i) for _, k, d, i in got] == [
            (k, *x) for k, x in zip(["file", "dir", "socket", "pipe"], want)
        ]
        assert rx.lines[1] == "content: only line"
        assert wait_eof(b.fileno())
        assert_eof_all([r], fds)
    serving_goes_on(rx, fds)
    fds.close(ffd, dfd)
    assert rx.holds({str(f.resolve()), str(tmp_path.resolve())}) == []
    rx.stop()  # once it has exited, all its output is in
    assert rx.errors() == []


def test_every_hostile_case_in_a_row(receiver, fds):
    """One receiver survives them all, one connection each, and is still
    serving (and exits 0 on SIGTERM) afterwards."""
    rx = receiver("--max-fds", 1)
    with rx.connect() as c:
        c.sendall(b"x")
        rx.wait_error(1)
    for n, (sent, reason) in enumerate([(2, "toomany"), (3, "ctrunc")], start=2):
        pipes = fds.pipes(sent)
        with rx.connect() as c:
            sendmsg_fds(c, b"x", [w for _, w in pipes])
            fds.close(*(w for _, w in pipes))
            assert rx.wait_error(n)[-1].startswith(ERRORS[reason])
            assert_eof_all([r for r, _ in pipes], fds)
    # a peer that vanishes right after sending, with a large payload
    r, w = fds.pipe()
    c = rx.connect()
    sendmsg_fds(c, b"y" * 65536, [w])
    c.close()
    fds.close(w)
    assert_eof_all([r], fds)
    serving_goes_on(rx, fds)
    rx.stop()  # once it has exited, all its output is in
    assert len(rx.received()) == 2
    errs = rx.errors()
    assert len(errs) == 3
    assert [e.startswith(ERRORS[k]) for e, k in zip(errs, ["nofd", "toomany", "ctrunc"])] == [True] * 3


def test_receiver_at_its_descriptor_limit(receiver, fds):
    """RLIMIT_NOFILE leaves room for few descriptors: the kernel installs
    what fits and sets MSG_CTRUNC; the receiver must close what it got."""
    rx = receiver()
    # fd numbers must stay below the limit: what is open now, the connection
    # and at most two of the eight we send
    limit = len(os.listdir(f"/proc/{rx.pid}/fd")) + 3
    old = resource.prlimit(rx.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(rx.pid, resource.RLIMIT_NOFILE, (limit, old[1]))  # the soft limit only
    pipes = fds.pipes(8)
    with rx.connect() as c:
        sendmsg_fds(c, b"x", [w for _, w in pipes])
        fds.close(*(w for _, w in pipes))
        errs = rx.wait_error()
        assert errs[0].startswith(ERRORS["ctrunc"]), errs
        assert_eof_all([r for r, _ in pipes], fds)
    resource.prlimit(rx.pid, resource.RLIMIT_NOFILE, old)
    serving_goes_on(rx, fds)
    rx.stop()  # once it has exited, all its output is in
    assert len(rx.received()) == 1
    assert len(rx.errors()) == 1


def test_no_descriptor_in_a_long_blob_is_one_error(receiver, fds):
    """200 kB without a descriptor take several reads: still one message, one error."""
    rx = receiver()
    with rx.connect() as c:
        c.sendall(b"z" * 200_000)
    serving_goes_on(rx, fds)
    rx.stop()
    errs = rx.errors()
    assert len(errs) == 1 and errs[0].startswith(ERRORS["nofd"]), errs


def test_out_of_descriptors_at_accept_sheds_the_connection(receiver, fds):
    """At RLIMIT_NOFILE, accept() fails with EMFILE and the connection stays
    in the backlog: a naive loop would spin. recv gives up a spare
    descriptor, accepts, closes - the client sees a clean end-of-file."""
    rx = receiver()
    held = {int(fd) for fd in os.listdir(f"/proc/{rx.pid}/fd")}
    limit = min(set(range(len(held) + 1)) - held)  # the lowest free number: no room from it on
    old = resource.prlimit(rx.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(rx.pid, resource.RLIMIT_NOFILE, (limit, old[1]))
    with rx.connect() as c:
        errs = rx.wait_error()
        assert errs[0].startswith("error: accept: EMFILE (Too many open files)"), errs
        assert wait_eof(c.fileno())  # shed: closed, not left hanging
    resource.prlimit(rx.pid, resource.RLIMIT_NOFILE, old)
    serving_goes_on(rx, fds)  # and it took its spare back: serving goes on
    rx.stop()


# ------------------------------------------------ the real peers: Python


def test_python_send_fds_to_recv(receiver, fds, tmp_path):
    rx = receiver()
    f = tmp_path / "py.txt"
    f.write_bytes(b"sent by socket.send_fds\n")
    ffd = fds.add(os.open(f, os.O_RDONLY))
    r, w = fds.pipe()
    want = [ident(ffd), ident(w)]
    with rx.connect() as c:
        assert socket.send_fds(c, [b"hi"], [ffd, w]) == 2
    fds.close(ffd, w)
    got = rx.wait_received(2)
    assert [(k, d, i) for _, k, d, i in got] == [("file", *want[0]), ("pipe", *want[1])]
    assert rx.lines[1] == "content: sent by socket.send_fds"
    assert_eof_all([r], fds)
    serving_goes_on(rx, fds)
    assert rx.holds({str(f.resolve())}) == []
    rx.stop()  # once it has exited, all its output is in
    assert rx.errors() == []


@pytest.fixture
def listener(tmp_path):
    """A Python AF_UNIX stream listener for `scm_rights send` to talk to."""
    path = tmp_path / "py.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    s.settimeout(WAIT)
    yield s, str(path)
    s.close()


def _accept_nothing_sent(lst):
    """After a failed `send`: if it connected at all, no descriptor came."""
    lst.setblocking(False)
    try:
        conn, _ = lst.accept()
    except BlockingIOError:
        return
    with conn:
        conn.settimeout(WAIT)
        msg, got, flags, _ = socket.recv_fds(conn, 16, SCM_MAX_FD)
        for fd in got:
            os.close(fd)
        assert (msg, got) == (b"", []), "a failed send still sent something"


@pytest.mark.parametrize("n", [1, 3, SCM_MAX_FD])
def test_send_to_python_recv_fds(listener, tmp_path, n):
    lst, path = listener
    files = []
    for i in range(min(n, 3)):
        p = tmp_path / f"f{i}.txt"
        p.write_bytes(f"line {i}\nmore\n".encode())
        files.append(p)
    args = [files[i % len(files)] for i in range(n)]  # the same file opened again is fine
    run(PROG, "send", "--unix", path, *args, timeout=WAIT)
    conn, _ = lst.accept()
    with conn:
        conn.settimeout(WAIT)
        msg, got, flags, _ = socket.recv_fds(conn, 1024, SCM_MAX_FD)
        try:
            assert len(msg) == 1, msg  # a one-byte payload
            assert not flags & socket.MSG_CTRUNC
            assert len(got) == n
            for fd, p in zip(got, args):
                st, want = os.fstat(fd), os.stat(p)
                assert (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino)
                assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
                assert os.pread(fd, 100, 0) == p.read_bytes()
        finally:
            for fd in got:
                os.close(fd)
        assert conn.recv(16) == b""  # ONE message, then the sender is gone


def test_send_254_files_is_a_usage_error(listener, tmp_path):
    lst, path = listener
    p = tmp_path / "f.txt"
    p.write_bytes(b"x\n")
    r = run(PROG, "send", "--unix", path, *([p] * (SCM_MAX_FD + 1)), expect=2, timeout=WAIT)
    assert len(r.stderr.splitlines()) == 1, r.stderr
    _accept_nothing_sent(lst)


def test_send_missing_file_exits_1(listener, tmp_path):
    lst, path = listener
    p = tmp_path / "f.txt"
    p.write_bytes(b"x\n")
    r = run(PROG, "send", "--unix", path, p, tmp_path / "no-such-file", expect=1, timeout=WAIT)
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "open" in r.stderr and os.strerror(2) in r.stderr, r.stderr
    _accept_nothing_sent(lst)


def test_send_to_nobody_exits_1(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"x\n")
    r = run(PROG, "send", "--unix", tmp_path / "nobody.sock", p, expect=1, timeout=WAIT)
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "connect" in r.stderr and os.strerror(2) in r.stderr, r.stderr
    # a socket file that nobody listens on any more: refused
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))
    r = run(PROG, "send", "--unix", stale, p, expect=1, timeout=WAIT)
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "connect" in r.stderr and os.strerror(111) in r.stderr, r.stderr


# ------------------------------------------------------- recv's own life


def test_count_exits_by_itself(receiver, fds):
    rx = receiver("--count", 3)
    pipes = fds.pipes(3)
    with rx.connect() as c:
        sendmsg_fds(c, b"x", [pipes[0][1], pipes[1][1]])
    fds.close(pipes[0][1], pipes[1][1])
    rx.wait_received(2)
    # still serving after 2 of 3: a second connection is accepted and served
    with rx.connect() as c:
        sendmsg_fds(c, b"x", [pipes[2][1]])
    fds.close(pipes[2][1])
    rx.exited()  # exit 0 after the third, socket file removed, nothing left
    assert [(d, i) for _, _, d, i in rx.received()] == [ident(r) for r, _ in pipes]
    assert_eof_all([r for r, _ in pipes], fds)


def test_sigint_ends_it_cleanly(receiver, fds):
    rx = receiver()
    serving_goes_on(rx, fds)
    rx.stop(signal.SIGINT)


def test_stale_socket_file_is_replaced(receiver, fds, tmp_path):
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))  # the file stays behind after close, like after a crash
    assert path.exists()
    rx = receiver(path=path)
    serving_goes_on(rx, fds)


def test_recv_refuses_to_replace_a_file_that_is_not_a_socket(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_bytes(b"keep me\n")
    r = run(PROG, "recv", "--unix", path, expect=1, timeout=WAIT)
    assert len(r.stderr.splitlines()) == 1 and "not a socket" in r.stderr, r.stderr
    assert path.read_bytes() == b"keep me\n"


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        ["recv"],
        ["recv", "--unix"],
        ["recv", "--unix", "{p}", "--max-fds", "254"],
        ["recv", "--unix", "{p}", "--max-fds", "many"],
        ["recv", "--unix", "{p}", "--count", "three"],
        ["recv", "--unix", "{p}", "--no-such-switch"],
        ["recv", "--unix", "{p}", "extra"],
        ["send", "--unix", "{p}", "--classic-receiver", "{f}"],
        ["send"],
        ["send", "--unix", "{p}"],
        ["send", "--unix", "{p}", "--no-such-switch", "{f}"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_arguments_exit_2(tmp_path, args):
    f = tmp_path / "f.txt"
    f.write_bytes(b"x\n")
    p = tmp_path / "r.sock"
    r = run(PROG, *(a.format(p=p, f=f) for a in args), expect=2, timeout=WAIT)
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert not p.exists()
