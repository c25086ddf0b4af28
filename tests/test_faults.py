"""Fault injection: the paths only a failing kernel call reaches - a full
descriptor table, a fork that fails, a channel whose peer is not who it should
be - reached with common/faultinj.so (LD_PRELOAD; its header comment has the
FAULTINJ rules). Every rule writes "faultinj: CALL #N -> WHAT" on stderr when
it fires, so each test also proves that the fault it is about happened.

Stage 03 checks no peer (SO_PEERCRED appears there only in newer_kernels.c's
narration), so the refusals tested here are stage 06's worker and stage 07's
upgrade channel.
"""

import os
import re
import signal
import time

import pytest

from conftest import ROOT, SAN, WAIT, run
from test_06_prefork_server import PROG, children, counters_until, fd_count, http_get, wait_count
from test_07_hot_restart import client, gens, request  # noqa: F401 (gens is a fixture)

SHIM = ROOT / "common/faultinj.so"
TICK = 0.099  # TICK_MS (06-prefork-server/server.h) in seconds, less the ms now_ms() rounds off


def fault_env(rules, **extra):
    """The environment of a program run with the shim and these rules."""
    env = dict(os.environ, FAULTINJ=rules, LD_PRELOAD=str(SHIM), **extra)
    if SAN:
        # The ASan runtime wants to come first; the shim only passes calls on.
        env["ASAN_OPTIONS"] = ":".join(
            filter(None, [env.get("ASAN_OPTIONS"), "verify_asan_link_order=0"]))
    return env


def fired(err_lines, call):
    """The "faultinj: CALL #N" lines of the shim, in order."""
    return [l for l in err_lines if l.startswith(f"faultinj: {call} #")]


# ---- 06: the dispatcher out of descriptors ---------------------------------

def test_06_emfile_pauses_accepting_then_serves_again(serve):
    """accept4 fails with EMFILE ten times in a row. The dispatcher takes
    the listener out of epoll for a tick (TICK_MS, 100 ms) after each one,
    instead of spinning on a listener that stays readable: the client waits
    at least ten ticks, then is served. A loop that kept the listener
    watched would burn the ten failures within milliseconds."""
    n = 10
    s = serve(PROG, "--workers", "1", env=fault_env(f"accept4@main:1-{n}:EMFILE"))
    t0 = time.monotonic()
    assert http_get(s.port)[0] == 200
    elapsed = time.monotonic() - t0
    s.wait_line(rf"^faultinj: accept4 #{n} -> EMFILE$", stream="stderr")
    assert len(fired(s.err_lines, "accept4")) == n
    assert elapsed >= n * TICK, f"{n} EMFILEs in {elapsed:.3f} s: the dispatcher did not pause"
    # and it is back to normal: the next client is not held back
    assert http_get(s.port)[0] == 200
    assert len(fired(s.err_lines, "accept4")) == n


# ---- 06: a worker's channel is not its parent's ----------------------------

@pytest.mark.parametrize("what, says", [
    ("pid=1", r"^\[new-worker-\d \d+\] the channel's peer \(SO_PEERCRED pid 1\) is not my "
              r"parent; refusing it$"),
    ("EACCES", r"^handoff_server: worker: getsockopt\(SO_PEERCRED\) on the channel: EACCES "
               r"\(Permission denied\)$"),
])
def test_06_worker_refuses_a_channel_whose_peer_is_not_its_parent(serve, tmp_path, what, says):
    """Two workers start and pass their SO_PEERCRED checks (uses 1 and 2,
    counted across the exec'd workers through FAULTINJ_COUNTS). One is
    killed; the check of its replacement (use 3) reports pid 1 as the
    channel's peer, or fails. That worker refuses the channel, says why, and
    exits before it is ready; the dispatcher backs off, starts another (use
    4), and serves with both."""
    env = fault_env(f"peercred:3:{what}", FAULTINJ_COUNTS=str(tmp_path / "counts"))
    s = serve(PROG, "--workers", "2", env=env)
    counters_until(s, lambda c: len(children(s.pid)) == 2)
    os.kill(children(s.pid)[0], signal.SIGKILL)
    s.wait_line(says, stream="stdout" if what.startswith("pid=") else "stderr")
    wait_count(s, r"worker-\d died before it was ready: respawning in 100 ms, not at once", 1)
    c = counters_until(s, lambda c: c["respawned"] == 2)
    assert c["lost"] == 0
    assert len(children(s.pid)) == 2
    assert all(http_get(s.port)[0] == 200 for _ in range(4))
    assert fired(s.err_lines, "peercred") == [f"faultinj: peercred #3 -> {what}"]


# ---- 06: a replacement worker cannot be started ----------------------------

@pytest.mark.parametrize("call, errno_name, uses, delays", [
    ("fork", "EAGAIN (Resource temporarily unavailable)", "3-5", [100, 200, 400]),
    ("socketpair", "EMFILE (Too many open files)", "3", [100]),
])
def test_06_respawn_failure_backs_off_and_keeps_serving(serve, call, errno_name, uses, delays):
    """Two workers start (the dispatcher's uses 1 and 2 of fork and of
    socketpair). One is killed; its replacement's CALL fails (uses 3...).
    The dispatcher says what failed, serves with the worker left, retries
    after 100 ms, then 200, 400 (doubling), and never exits; nothing it opened
    for a failed attempt stays open."""
    errno_short = errno_name.split()[0]
    s = serve(PROG, "--workers", "2", env=fault_env(f"{call}@main:{uses}:{errno_short}"))
    counters_until(s, lambda c: len(children(s.pid)) == 2)
    fds = fd_count(s.pid)
    victim = children(s.pid)[0]
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    pat = (rf"cannot start a new worker-\d \({call}: {re.escape(errno_name)}\); "
           r"serving with the others, retrying in (\d+) ms")
    wait_count(s, pat, 1)
    assert http_get(s.port)[0] == 200  # the worker left serves meanwhile
    lines = wait_count(s, pat, len(delays))
    assert [int(re.search(pat, l).group(1)) for l in lines] == delays
    c = counters_until(s, lambda c: c["respawned"] == 1)
    # the retries waited their delays: a fork loop would not have
    assert time.monotonic() - t0 >= sum(delays) / 1000 * 0.99
    assert c["lost"] == 0 and s.proc.poll() is None
    assert len(children(s.pid)) == 2 and victim not in children(s.pid)
    assert fd_count(s.pid) == fds
    assert len(fired(s.err_lines, call)) == len(delays)
    assert all(http_get(s.port)[0] == 200 for _ in range(4))


@pytest.mark.parametrize("rule, message", [
    ("fork@main:1:EAGAIN", "starting worker-0: fork: EAGAIN (Resource temporarily unavailable)"),
    ("socketpair@main:2:EMFILE", "starting worker-1: socketpair: EMFILE (Too many open files)"),
])
def test_06_a_worker_that_cannot_start_at_all_is_named_with_its_errno(rule, message):
    """At start-up the dispatcher has no worker to fall back on: it exits,
    and its one line says which call failed, and how."""
    r = run(PROG, "--serve", "--port", "0", "--workers", "2", expect=1, env=fault_env(rule))
    assert f"handoff_server: {message}" in r.stderr.splitlines()
    assert "Success" not in r.stderr


def wait_err(g, pattern):
    """Bounded wait for a stderr line of a stage 07 run (Gens drains it)."""
    pat = re.compile(pattern)
    deadline = time.monotonic() + WAIT
    with g.cv:
        while not any(pat.search(l) for l in g.err):
            left = deadline - time.monotonic()
            assert left > 0, f"no stderr line matching {pattern!r}: {g.err[-5:]}"
            g.cv.wait(min(left, 0.5))


# ---- 07: the upgrade fails, the old generation serves ----------------------

@pytest.fixture
def shim07(monkeypatch):
    """Generation 1 runs with the shim and these rules; FAULTINJ_SCOPE=image:
    the generations it execs run without them."""
    def set_rules(rules):
        for k, v in fault_env(rules, FAULTINJ_SCOPE="image").items():
            if os.environ.get(k) != v:
                monkeypatch.setenv(k, v)
    return set_rules


def upgrade_fails_then_works(gens, expect_lines, check=None):
    """Generation 1 serves a keep-alive connection K; SIGHUP; the upgrade
    fails (the lines in expect_lines say how). Generation 1 is still the
    master, K and new connections are still served by it, check(g, g1) holds;
    the next SIGHUP upgrades, and K moves to generation 2. Returns the run."""
    g = gens("handoff")
    g1 = g.master()
    with client(g.port) as k:
        assert request(k) == (1, g1)
        os.kill(g1, signal.SIGHUP)
        for pattern in expect_lines:
            g.wait_line(pattern)
        assert g.master() == g1
        assert request(k) == (1, g1)
        with client(g.port) as n:
            assert request(n, close=True) == (1, g1)
        if check:
            check(g, g1)
        g2 = g.upgrade(2)
        assert request(k) == (2, g2)
    g.stop()
    return g


def test_07_fork_failure_during_upgrade_leaves_the_old_generation_serving(gens, shim07):
    shim07("fork@main:1:EAGAIN")
    g = upgrade_fails_then_works(gens, [
        r"^\[gen1 \d+\] cannot start generation 2 \(fork: EAGAIN \(Resource "
        r"temporarily unavailable\)\): generation 1 keeps serving$"])
    assert fired(g.err, "fork") == ["faultinj: fork #1 -> EAGAIN"]


def test_07_refused_upgrade_peer_leaves_the_old_generation_serving(gens, shim07):
    """Generation 1's SO_PEERCRED check of whoever connected to its upgrade
    socket says pid 1, not the generation it started: it refuses it and keeps
    its listener and its connections. The refused one says why it gives up
    (not "Success"), and the next upgrade works."""
    def refused_says_why(g, g1):
        # gen2 wrote it before it exited; the drain thread may not have read it yet
        wait_err(g, r"^hot_restart: generation 2: ")
        refused = [l for l in g.err if l.startswith("hot_restart: generation 2:")]
        assert refused == [f"hot_restart: generation 2: pid {g1} closed the upgrade channel "
                           "without handing anything over"]

    shim07("peercred:1:pid=1")
    g = upgrade_fails_then_works(gens, [
        r"^\[gen1 \d+\] refused an upgrade peer that is not generation 2: EPERM$",
        r"^\[gen1 \d+\] generation 2 failed \(exit status 1\): generation 1 keeps serving$"],
        refused_says_why)
    assert fired(g.err, "peercred") == ["faultinj: peercred #1 -> pid=1"]
    assert not any("Success" in l for l in g.err)
