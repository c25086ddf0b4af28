"""Stage 04: the parent's event loop steals the bytes of a connection whose
descriptor is in flight - the article's step 2 and 3, measured.

Every cell of the matrix (3 modes x 3 pollers x --child-dup off/on) is
checked twice:
  * the forced demo run: its `result:` line, and what its own client process
    saw ("I sent N bytes; the worker says it got M");
  * --serve, with this test as the outside client: it sends bytes, shuts down
    its write side and reads the worker's `worker PID got N bytes` - the
    number it compares with what it sent - then the server's `result:` line.
The expected outcomes are written from the lesson, not copied from a run:
naive loses every byte, article loses nothing under select/poll but keeps a
duplicate per connection, article under epoll hands the second connection's
bytes to the parent through the first one's stale registration, fixed is
clean everywhere, and --child-dup changes none of it.

Nothing sleeps: the program forces its interleaving with pipes; the tests
wait, bounded, for lines and end-of-file.
"""

import os
import re
import signal
import socket
import subprocess

import pytest

from conftest import (RUN, WAIT, binary, check_sanitizer, inodes_of, kinds_of, processes_in_group, read_trace,
                      readme_diagrams, run, wait_eof)

PROG = "04-dup-race/dup_race"
MODES = ["naive", "article", "fixed"]
POLLERS = ["select", "poll", "epoll"]
PAYLOAD = len("connection 1: hello, worker\n")  # what the built-in client sends per connection
SERVE_SIZES = [10, 23]  # what this test sends to --serve, connection by connection


def events(trace, role=None, event=None):
    return [e for e in trace if (role is None or e["role"] == role) and (event is None or e["event"] == event)]


def ints(res):
    return {k: (v if k in ("mode", "poller") else int(v)) for k, v in res.items()}


def expected(mode, poller, sizes):
    """What each connection's worker must get, and the result-line counters
    that follow from it, for the forced rounds."""
    n = len(sizes)
    if mode == "naive":
        # the parent still watches the number it sent: it reads every byte first
        got = [0] * n
        extra = dict(stale_events=0, misdirected=0, parent_fd_growth=0)
    elif mode == "article" and poller == "epoll":
        # connection 1's registration outlives close(): once connection 2 has
        # taken its number, the parent reads connection 2 through it
        got = [sizes[0]] + [0] * (n - 1)
        extra = dict(misdirected=1, parent_fd_growth=n)
    elif mode == "article":
        # close() took the original number out of the set; the duplicate stays
        got = list(sizes)
        extra = dict(stale_events=0, misdirected=0, parent_fd_growth=n)
    else:
        got = list(sizes)
        extra = dict(stale_events=0, misdirected=0, parent_fd_growth=0)
    counters = dict(connections=n, sent=sum(sizes), delivered=sum(got), stolen=sum(sizes) - sum(got), **extra)
    return got, counters


def check_counters(res, mode, poller, child_dup, counters):
    assert res["mode"] == mode and res["poller"] == poller and res["child_dup"] == child_dup
    for k, v in counters.items():
        assert res[k] == v, f"{k}: {res[k]} != {v} in {res}"
    if mode == "article" and poller == "epoll":
        # one report per look at least: the closed number keeps being reported
        assert res["stale_events"] >= res["connections"] + 1


# ------------------------------------------------------------ the matrix


def talk_reply(c):
    """The worker's reply line on connection c: (worker pid, bytes it got).
    Bounded by the socket's timeout; end-of-file before the line fails."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = c.recv(100)
        assert chunk, f"connection closed without a reply (after {line!r})"
        line += chunk
    m = re.fullmatch(rb"worker (\d+) got (\d+) bytes\n", line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


def talk(port, payload):
    """An outside client: send, shut down the write side, read the reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        return talk_reply(c)


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("child_dup", [0, 1], ids=["nodup", "child-dup"])
@pytest.mark.parametrize("poller", POLLERS)
@pytest.mark.parametrize("mode", MODES)
def test_matrix(mode, poller, child_dup, serve, tmp_path):
    flags = ["--mode", mode, "--poller", poller] + (["--child-dup"] if child_dup else [])

    # 1. the forced demo: its result line and its own client's view
    trace = tmp_path / "t.jsonl"
    r = run(PROG, *flags, "--trace", trace)
    got, counters = expected(mode, poller, [PAYLOAD, PAYLOAD])
    check_counters(ints(r.result()), mode, poller, child_dup, counters)
    seen = [
        (int(m.group(1)), int(m.group(2)))
        for l in r.narration("client")
        if (m := re.search(r"I sent (\d+) bytes; the worker says it got (\d+)", l))
    ]
    assert seen == [(PAYLOAD, g) for g in got]
    t = read_trace(trace)
    # the worker did the article's step 3 exactly when asked, and nothing else changed
    assert len(events(t, "worker", "dup")) == (2 if child_dup else 0)
    assert [e["bytes"] for e in events(t, "worker", "read")] == got

    # 2. --serve, this test as the outside client
    s = serve(PROG, *flags)
    got, counters = expected(mode, poller, SERVE_SIZES)
    observed = []
    for i, size in enumerate(SERVE_SIZES):
        wpid, n = talk(s.port, bytes([65 + i]) * size)
        assert parent_of(wpid) == s.pid  # the pre-forked worker answered
        observed.append(n)
    assert observed == got
    s.stop()
    check_counters(ints(dict(kv.split("=", 1) for kv in s.lines[-1][len("result: ") :].split())),
                   mode, poller, child_dup, counters)
    assert s.lines[-1].startswith("result: ")


@pytest.mark.parametrize("poller", POLLERS)
@pytest.mark.parametrize("mode", MODES)
def test_child_dup_changes_no_outcome(mode, poller):
    """The reader's question, measured: the worker's dup changes nothing."""
    a = run(PROG, "--mode", mode, "--poller", poller).result()
    b = run(PROG, "--mode", mode, "--poller", poller, "--child-dup").result()
    assert a.pop("child_dup") == "0" and b.pop("child_dup") == "1"
    assert a == b


# ------------------------------------------------------------ descriptor tables, from outside


def _without(table, path):
    return {fd: k for fd, k in table.items() if k[0] != f"file:{path}"}


@pytest.mark.parametrize("mode,poller,child_dup", [(m, p, 0) for m in MODES for p in POLLERS]
                         + [(m, "select", 1) for m in MODES])
def test_children_hold_only_what_they_should(mode, poller, child_dup, checkpoints, tmp_path):
    """Read from /proc/PID/fd while each child is stopped at a checkpoint:
    the worker holds its channel end and its hold pipe - not the listening
    socket, the doorbell, the client's pipes; while serving a connection it
    holds that connection and no other (with --child-dup: the duplicate, not
    both); the client holds its two pipes and nothing of the parent's."""
    trace = tmp_path / "t.jsonl"
    run(PROG, "--mode", mode, "--poller", poller, *(["--child-dup"] if child_dup else []),
        *checkpoints.args, "--trace", trace)
    accepted = {e["conn"]: e["inode"] for e in events(read_trace(trace), "parent", "accept")}
    (worker,) = checkpoints.at("worker")
    (client,) = checkpoints.at("client")
    assert kinds_of(_without(worker.table, trace)) == ["pipe", "unix"], worker
    assert kinds_of(_without(client.table, trace)) == ["pipe", "pipe"], client
    serving = checkpoints.at("worker-conn")
    assert len(serving) == len(accepted) == 2
    for conn, stop in zip(sorted(accepted), serving):
        table = _without(stop.table, trace)
        assert kinds_of(table) == ["pipe", "tcp", "unix"], stop
        assert inodes_of(table, "tcp") == [accepted[conn]]
        assert inodes_of(table, "unix") == inodes_of(worker.table, "unix")  # the same channel end


@pytest.mark.parametrize("mode", MODES)
def test_serve_worker_holds_only_the_connection_it_serves(mode, serve, checkpoints):
    """The same check with this test as the outside client: the worker holds
    the server's end of our connection, and no earlier client's."""
    s = serve(PROG, "--mode", mode, *checkpoints.args)
    inodes = []
    for i in range(2):
        with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
            c.sendall(b"x" * (i + 1))
            s.wait_line(rf"accept\(\) -> fd \d+: connection #{i + 1}\b")
            inodes.append(_server_side_inode(c))
            c.shutdown(socket.SHUT_WR)
            talk_reply(c)
    (worker,) = checkpoints.at("worker")
    assert kinds_of(worker.table) == ["pipe", "unix"], worker
    serving = checkpoints.at("worker-conn")
    assert [inodes_of(st.table, "tcp") for st in serving] == [[inodes[0]], [inodes[1]]]
    assert all(kinds_of(st.table) == ["pipe", "tcp", "unix"] for st in serving), serving
    s.stop()


# ------------------------------------------------------------ the demo


def test_demo_runs_three_modes_and_prints_the_table():
    r = run(PROG)
    rows = {}
    for line in r.lines:
        f = line.split()
        if len(f) == 8 and f[0] in MODES:
            rows[f[0]] = dict(zip(["poller", "sent", "delivered", "stolen", "stale", "misdirected", "growth"], f[1:]))
    assert set(rows) == set(MODES)
    assert rows["naive"]["stolen"] == rows["naive"]["sent"] != "0"
    assert rows["article"]["stolen"] == "0" and rows["article"]["growth"] == "2"
    assert rows["fixed"]["stolen"] == rows["fixed"]["growth"] == rows["fixed"]["stale"] == "0"
    res = r.result()
    assert res["mode"] == "all" and res["connections"] == "6"
    assert r.lines[-1].startswith("result: ")


@pytest.mark.parametrize("poller,step", [("select", "FD_CLR(4), close(4)"), ("poll", "drop fd 4's pollfd, close(4)"),
                                         ("epoll", "close(4), no EPOLL_CTL_DEL")])
def test_article_narration_names_what_took_the_number_out(poller, step, tmp_path):
    """The article's steps say dup, send, close; under select and poll the
    loop must also drop the number from its set, and the narration says so.
    The trace agrees: under select/poll no event is ever reported for the
    closed number; under epoll one is (the trap)."""
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--mode", "article", "--poller", poller, "--connections", "1", "--trace", trace)
    assert f"article: dup(4) -> 5, sendmsg(fd 5), {step}; fd 5 stays open" in r.narration("parent")
    assert bool(events(read_trace(trace), "parent", "stale")) == (poller == "epoll")


# ------------------------------------------------------------ the epoll trap


def test_epoll_stale_event_then_misdirected_read(tmp_path):
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--mode", "article", "--poller", "epoll", "--trace", trace)
    t = read_trace(trace)
    a1, a2 = events(t, "parent", "accept")
    closes = events(t, "parent", "close")
    # the original number was closed right after the send of its duplicate ...
    assert closes[0]["fd"] == a1["fd"]
    # ... and epoll still reported an event under it: the stale registration
    stale = events(t, "parent", "stale")
    assert stale[0]["fd"] == a1["fd"] and stale[0]["conn"] == 1 and stale[0]["what"] == "EBADF"
    # the next accept reused the number; the event of connection 1 made the
    # parent read it - the socket it read is connection 2's (kernel inode)
    assert a2["fd"] == a1["fd"] and a2["inode"] != a1["inode"]
    (mis,) = events(t, "parent", "misdirected")
    assert mis["fd"] == a1["fd"] and mis["was"] == 1 and mis["now"] == 2
    assert mis["inode"] == a2["inode"] and mis["bytes"] == PAYLOAD
    # so connection 2's worker got its socket, and nothing in it
    w2 = [e for e in events(t, "worker", "recvmsg") if e["conn"] == 2][0]
    assert w2["inode"] == a2["inode"]
    assert [e["bytes"] for e in events(t, "worker", "read")] == [PAYLOAD, 0]
    assert any("WRONG connection" in l for l in r.narration("parent"))


def test_epoll_fix_is_epoll_ctl_del_before_close(tmp_path):
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--mode", "fixed", "--poller", "epoll", "--connections", "3", "--trace", trace)
    t = [e for e in read_trace(trace) if e["role"] == "parent"]
    order = [e["event"] for e in t if e["event"] in ("unwatch", "sendmsg", "close")]
    assert order == ["unwatch", "sendmsg", "close"] * 3
    assert not events(t, event="stale") and not events(t, event="misdirected")
    res = r.result()
    assert res["stale_events"] == res["misdirected"] == res["stolen"] == "0"
    assert res["delivered"] == res["sent"] == str(3 * PAYLOAD)


# ------------------------------------------------------------ select/poll: close without FD_CLR


@pytest.mark.parametrize("poller,word", [("select", "EBADF"), ("poll", "POLLNVAL")])
def test_no_fd_clr_reports_the_closed_number(poller, word, tmp_path):
    trace = tmp_path / "t.jsonl"
    r = run(PROG, "--mode", "article", "--poller", poller, "--no-fd-clr", "--trace", trace)
    res = r.result()
    # each hand-off leaves a closed number in the set; the next look trips on it
    assert res["stale_events"] == res["connections"] == "2"
    assert res["stolen"] == "0" and res["delivered"] == res["sent"]
    assert [e["what"] for e in events(read_trace(trace), "parent", "stale")] == [word, word]
    assert any(word in l for l in r.narration("parent"))


# ------------------------------------------------------------ what the article leaves open


def _server_side_inode(client):
    lport, rport = client.getsockname()[1], client.getpeername()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == lport and int(fields[1].split(":")[1], 16) == rport:
                return int(fields[9])
    raise AssertionError("server end not found in /proc/net/tcp")


def _holds(pid, inode):
    want = f"socket:[{inode}]"
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                return True
        except OSError:
            pass
    return False


@pytest.mark.parametrize("mode,kept", [("article", True), ("fixed", False), ("naive", False)])
def test_parent_keeps_the_duplicate_and_the_client_sees_no_eof(mode, kept, serve):
    s = serve(PROG, "--mode", mode)
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"hello")
        # accepted (so the server's socket has an inode), and still open: the
        # worker holds it until our end-of-file
        s.wait_line(r"accept\(\) -> fd \d+: connection #1")
        inode = _server_side_inode(c)
        c.shutdown(socket.SHUT_WR)
        wpid, _ = talk_reply(c)
        # the worker has replied and closed its copy once the server has
        # counted the report; naive's parent closes its copy at end-of-file
        # on its next turn, so wait for the reply to be accounted first
        if kept:
            assert _holds(s.pid, inode), "the article's duplicate should still be open in the parent"
            c.settimeout(1.0)
            try:
                data = c.recv(1)
            except socket.timeout:
                data = None
            assert data is None, "end-of-file although the parent holds a duplicate"
        else:
            assert wait_eof(c.fileno()), "no end-of-file after the worker closed"
            assert not _holds(s.pid, inode) and not _holds(wpid, inode)
    s.stop()


# ------------------------------------------------------------ --stress


@pytest.mark.parametrize("poller", POLLERS)
def test_stress_fixed_loses_nothing(poller):
    r = run(PROG, "--stress", "1000", "--mode", "fixed", "--poller", poller)
    res = ints(r.result())
    assert res["connections"] == 1000
    assert res["sent"] == res["delivered"] > 0
    assert res["stolen"] == res["stale_events"] == res["misdirected"] == res["parent_fd_growth"] == 0
    (line,) = [l for l in r.lines if l.startswith("stress: ")]
    assert "robbed=0" in line.split()  # as the client process counted the replies


@pytest.mark.parametrize("poller", POLLERS)
def test_stress_naive_every_byte_is_read_by_someone(poller):
    """Natural timing: how often naive bites varies; what cannot vary is that
    each byte is read by exactly one of the parent and the worker."""
    res = ints(run(PROG, "--stress", "300", "--mode", "naive", "--poller", poller).result())
    assert res["connections"] == 300
    assert res["delivered"] + res["stolen"] == res["sent"] > 0
    assert res["parent_fd_growth"] == 0


# ------------------------------------------------------------ README


def _diagram_runs():
    """(arguments, diagram) for each diagram in the README: the line before
    each ```mermaid block is `<!-- dup_race ARGS -->`."""
    text = open(os.path.join(os.path.dirname(__file__), "..", "04-dup-race", "README.md")).read()
    found = re.findall(r"<!-- dup_race (.*?) -->\s*```mermaid\n(.*?)```", text, re.S)
    assert found and len(found) == len(readme_diagrams("04-dup-race"))
    return [(args.split(), diagram.strip()) for args, diagram in found]


def test_readme_diagrams_match_fresh_runs():
    for args, diagram in _diagram_runs():
        # started with only 0, 1 and 2 open, as from a shell: the descriptor
        # numbers in the diagram are the lowest free ones
        p = subprocess.Popen([binary(PROG), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=RUN)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            pytest.fail(f"dup_race {' '.join(args)} did not finish")
        assert p.returncode == 0, err
        check_sanitizer(err)
        assert not processes_in_group(p.pid)
        fresh = out[out.index("sequenceDiagram") : out.index("\nresult: ")].strip()
        assert fresh == diagram, f"README diagram for {' '.join(args)} is stale"


def test_bad_arguments_exit_2():
    for args in (["--mode", "clever"], ["--poller", "kqueue"], ["--stress", "0"], ["--connections", "65"],
                 ["--poller", "epoll", "--no-fd-clr"], ["--serve", "--stress", "5"], ["--stress", "5", "--mermaid"],
                 ["--port", "1"], ["extra"]):
        r = run(PROG, *args, expect=2)
        assert r.stderr.strip() and len(r.stderr.strip().splitlines()) == 1
    assert run(PROG, "--help").stdout.startswith("usage:")
