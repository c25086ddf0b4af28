"""Stage 06: the server under clients that push it - pipelining without
pause, floods of records or junk, running out of descriptors, silent TLS
clients, outsiders on the proxy's Unix sockets - and the worker's descriptor
table and key material, checked from outside (/proc/PID/fd, /proc/PID/status).
"""

import os
import resource
import select
import signal
import socket
import subprocess
import time

import pytest

from conftest import WAIT, binary, check_sanitizer
from test_06_prefork_server import (
    PROG, counters, counters_until, children, read_response, tls_connect, tls_context,
    tls_response, until_eof, http_get, tls_get, wait_count)

QUICK = 3.0  # an answer that is not held back comes well within this


def pipelined(n):
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(n - 1))
    return reqs + b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("n", [40, 100])
def test_pipelined_requests_in_one_write_all_answered_at_once(serve, n):
    """The worker stops reading when its output buffer is nearly full; it
    must come back for the requests still buffered once the output is out,
    not wait for the client to send more (the header timeout is a minute
    here: a stall shows as a socket timeout)."""
    s = serve(PROG, "--workers", "1", "--header-timeout", "60000")
    with socket.create_connection(("127.0.0.1", s.port), timeout=QUICK) as c:
        c.sendall(pipelined(n))
        heads = [read_response(c)[2] for _ in range(n)]
        assert all(h.startswith("HTTP/1.1 200") for h in heads)
        assert all("keep-alive" in h for h in heads[:-1]) and "Connection: close" in heads[-1]
        assert until_eof(c) == b""


@pytest.mark.parametrize("n", [40, 100])
def test_tls_pipelined_requests_in_one_write_all_answered_at_once(serve, n):
    s = serve(PROG, "--workers", "1", "--tls", "--header-timeout", "60000")
    with tls_connect(s.port, tls_context(), timeout=QUICK) as c:
        c.sendall(pipelined(n))
        buf = bytearray()
        heads = [tls_response(c, buf)[2] for _ in range(n)]
        assert all(h.startswith("HTTP/1.1 200") for h in heads)
        assert all("keep-alive" in h for h in heads[:-1]) and "Connection: close" in heads[-1]
        assert not buf and c.recv(1) == b""


def test_a_flooding_client_does_not_starve_another_on_the_same_worker(serve):
    """One worker, two clients. A sends junk (400, then the worker drains what
    A still sends until A closes) as fast as it can, from a thread, for as long
    as the test needs; meanwhile B is answered within a second, every time.
    The worker reads at most TURN_BYTES of one connection per turn of its
    loop (worker.c)."""
    import threading

    s = serve(PROG, "--workers", "1")
    stop = threading.Event()
    flood = socket.create_connection(("127.0.0.1", s.port), timeout=WAIT)
    flood.sendall(b"JUNK\r\n\r\n")
    assert read_response(flood)[0] == 400
    chunk = b"x" * (1 << 20)

    def pump():
        try:
            while not stop.is_set():
                flood.sendall(chunk)
        except OSError:
            pass  # the worker gave up on us: fine, B's answers are what we check

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        for _ in range(5):
            t0 = time.monotonic()
            status, _, _ = http_get(s.port, timeout=1.0)
            assert status == 200 and time.monotonic() - t0 < 1.0
    finally:
        stop.set()
        flood.shutdown(socket.SHUT_RDWR)
        t.join(WAIT)
        flood.close()
        assert not t.is_alive()


def test_out_of_descriptors_a_worker_is_not_replaced_yet_and_the_server_lives(serve):
    """The dispatcher's descriptor table is full (RLIMIT_NOFILE 64, 80 silent
    TLS clients) when a worker is SIGKILLed: its replacement cannot get a
    socketpair. The dispatcher says so, keeps serving with the worker left,
    and retries with a back-off; once the clients are gone, the slot gets its
    worker back."""
    s = serve(PROG, "--workers", "2", "--tls", "--handshake-timeout", "600000")
    resource.prlimit(s.pid, resource.RLIMIT_NOFILE, (64, 64))
    idle = [socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) for _ in range(80)]
    try:
        counters_until(s, lambda c: c["accepted"] >= 50)  # the table is full now
        victim = children(s.pid)[0]
        os.kill(victim, 9)
        wait_count(s, r"cannot start a new worker-\d \(socketpair: EMFILE", 1)
        assert s.proc.poll() is None
    finally:
        for c in idle:
            c.close()
    c = counters_until(s, lambda c: c["respawned"] == 1)
    assert c["refused"] == 0
    assert len(children(s.pid)) == 2 and victim not in children(s.pid)
    assert tls_get(s.port)[0] == 200


def unix_listeners_of(pid):
    """The abstract addresses of the listening Unix sockets pid holds, from
    /proc/net/unix (flags 00010000 = __SO_ACCEPTCON) and /proc/PID/fd."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in inodes and parts[3] == "00010000" and parts[7].startswith("@"):
                found.append(parts[7][1:])
    return found


def test_proxy_worker_talks_only_to_its_dispatcher(serve):
    """The proxy's workers listen on abstract Unix addresses, which any local
    process can connect to. A worker checks SO_PEERCRED: an outsider gets
    nothing, not even a 400; the dispatcher's clients are still served."""
    s = serve(PROG, "--workers", "1", "--model", "proxy")
    (worker,) = children(s.pid)
    (addr,) = unix_listeners_of(worker)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
        u.settimeout(WAIT)
        u.connect("\0" + addr)
        try:
            u.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            got = until_eof(u)
        except (BrokenPipeError, ConnectionResetError):
            got = b""
        assert got == b""
    assert http_get(s.port)[0] == 200


def test_tls_workers_are_fresh_images_and_not_dumpable():
    """With --tls a worker parses what clients send with hand-written code:
    it must not hold the server's private key, nor the SSL objects and
    session states of other connections. The dispatcher forks and the child
    execs the same binary in the worker role (its cmdline says so), so
    nothing of the dispatcher's memory is left in it; and it makes itself
    not dumpable (no core dump of its traffic keys, no ptrace or /proc/PID/mem
    by other processes of the user): proc(5) says the files of such a
    process (/proc/PID/status, mem, ...) belong to root, which shows when the
    server runs as nobody."""
    nobody = 65534

    def drop():
        os.setgroups([])
        os.setgid(nobody)
        os.setuid(nobody)

    p = subprocess.Popen([binary(PROG), "--serve", "--port", "0", "--workers", "1", "--tls"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=drop,
                         start_new_session=True)
    try:
        assert select.select([p.stdout], [], [], WAIT)[0], "no first line"
        first = p.stdout.readline().decode()
        port = int(first.rsplit(":", 1)[1])
        (worker,) = children(p.pid)
        argv = open(f"/proc/{worker}/cmdline", "rb").read().split(b"\0")
        assert argv[:2] == [b"handoff_server", b"--worker-role"]
        assert os.readlink(f"/proc/{worker}/exe") == os.readlink(f"/proc/{p.pid}/exe")
        assert os.stat(f"/proc/{p.pid}/status").st_uid == nobody  # the dispatcher: dumpable
        assert os.stat(f"/proc/{worker}/status").st_uid == 0  # the worker: not dumpable
        assert tls_get(port)[0] == 200
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(WAIT)
        err = p.stderr.read().decode()
        p.stdout.close()
        p.stderr.close()
    assert rc == 0, err
    check_sanitizer(err)


def fd_table(pid):
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass  # closed while we looked
    return out


def sockets(table):
    return {fd: t for fd, t in table.items() if t.startswith("socket:[")}


def test_every_worker_holds_its_channel_and_its_connections_and_nothing_else(serve):
    """Each worker's descriptor table, read from outside (/proc/PID/fd), once
    every connection is acknowledged: its channel, the connections it serves,
    signalfd, epoll and what the test gave the server (stdio, the watch pipe)
    - and nothing else: not the dispatcher's listening socket, not the
    dispatcher's end of any channel, not another worker's channel, not a copy
    of a connection another worker serves. The first connection kills its
    worker before the ack, so the replacement is started while the
    dispatcher holds an un-acknowledged copy it must not inherit."""
    s = serve(PROG, "--workers", "2", "--die-before-ack", "1")
    assert http_get(s.port)[0] == 200  # and EOF after it: nobody kept a copy
    counters_until(s, lambda c: c["acked"] == 1 and c["respawned"] == 1)
    conns = [socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) for _ in range(6)]
    try:
        served_by = []
        for c in conns:
            c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            served_by.append(int(read_response(c)[1].split()[-1]))
        counters_until(s, lambda c: c["acked"] == 7)
        workers = children(s.pid)
        assert len(workers) == 2
        disp = fd_table(s.pid)
        # stdio and the test's watch pipe: what the dispatcher holds that is
        # neither a socket nor its own signalfd and epoll
        inherited = [t for t in disp.values() if not t.startswith(("socket:[", "anon_inode:"))]
        tables = {w: fd_table(w) for w in workers}
        for w, table in tables.items():
            mine = set(sockets(table).values())
            assert len(mine) == 1 + served_by.count(w), (w, table)
            assert not mine & set(sockets(disp).values()), "a socket the dispatcher holds"
            for other, t in tables.items():
                if other != w:
                    assert not mine & set(sockets(t).values()), "a socket another worker holds"
            rest = sorted(t for t in table.values() if not t.startswith("socket:["))
            assert rest == sorted(inherited + ["anon_inode:[signalfd]", "anon_inode:[eventpoll]"])
    finally:
        for c in conns:
            c.close()


def test_tls_silent_handshakes_do_not_lock_out_other_clients(serve):
    """Twenty clients connect to the HTTPS port and say nothing (their
    handshakes would wait ten minutes). They do not count against
    --queue-max (4 here: connections ready for a worker), so a real client is
    still served at once; and past --handshakes-max (8) the oldest silent one
    is closed to make room, so they cannot hold the dispatcher's descriptors
    either."""
    for extra, evicted in (((), 0), (("--handshakes-max", "8"), 13)):
        s = serve(PROG, "--workers", "1", "--tls", "--queue-max", "4",
                  "--handshake-timeout", "600000", *extra)
        silent = [socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) for _ in range(20)]
        try:
            counters_until(s, lambda c: c["accepted"] == 20)
            t0 = time.monotonic()
            assert tls_get(s.port)[0] == 200
            assert time.monotonic() - t0 < QUICK
            c = counters_until(s, lambda c: c["acked"] == 1)
            assert c["refused"] == 0 and c["tls_failed"] == evicted
            if evicted:  # the first 13 to come were closed, the last 7 are still open
                assert all(until_eof(x) == b"" for x in silent[:13])
        finally:
            for x in silent:
                x.close()
        s.stop()


def _expand_label(hash_alg, secret, label, length):
    """RFC 8446 7.1 HKDF-Expand-Label (written from the RFC, with the
    cryptography package: independent of the record layer under test)."""
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(hash_alg, length, info).derive(secret)


def test_tls_key_update_flood_is_cut_off_and_does_not_starve_another_client(serve, tmp_path):
    """A client sends 40 KeyUpdates in a row (each moves its key on, none
    carries data). Past 32 records without data the worker's record layer
    calls it unexpected_message: the worker sends that alert, closes the
    connection, and meanwhile answers another client on the same worker."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    s = serve(PROG, "--workers", "1", "--tls")
    keylog = tmp_path / "keylog"
    with tls_connect(s.port, tls_context(keylog=keylog), timeout=QUICK) as c:
        suite = c.cipher()[0]
        assert suite in ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"), suite
        alg, klen = (hashes.SHA384(), 32) if "SHA384" in suite else (hashes.SHA256(), 16)
        c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # client record 0: the session is the worker's
        assert tls_response(c, bytearray())[0] == 200
        keys = {f[0]: f[2] for f in (l.split() for l in keylog.read_text().splitlines()) if len(f) == 3}
        secret, seq, flood = bytes.fromhex(keys["CLIENT_TRAFFIC_SECRET_0"]), 1, b""
        for _ in range(40):
            key, iv = _expand_label(alg, secret, b"key", klen), _expand_label(alg, secret, b"iv", 12)
            inner = bytes([24, 0, 0, 1, 0, 22])  # KeyUpdate, update_not_requested; type handshake
            header = bytes([23, 3, 3]) + (len(inner) + 16).to_bytes(2, "big")
            nonce = (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")
            flood += header + AESGCM(key).encrypt(nonce, inner, header)
            secret, seq = _expand_label(alg, secret, b"traffic upd", alg.digest_size), 0
        raw_sock = socket.socket(fileno=os.dup(c.fileno()))
        try:
            raw_sock.settimeout(QUICK)
            raw_sock.sendall(flood)
            assert tls_get(s.port)[0] == 200  # the other client, same worker
            # the alert record, then EOF: the server's key never changed (our
            # KeyUpdates did not ask it to); its records so far: 2 tickets, 1 answer
            got = until_eof(raw_sock)
            server = bytes.fromhex(keys["SERVER_TRAFFIC_SECRET_0"])
            key, iv = _expand_label(alg, server, b"key", klen), _expand_label(alg, server, b"iv", 12)
            assert len(got) >= 5 and got[0] == 23
            n = int.from_bytes(got[3:5], "big")
            nonce = (int.from_bytes(iv, "big") ^ 3).to_bytes(12, "big")
            inner = AESGCM(key).decrypt(nonce, got[5 : 5 + n], got[:5])
            assert inner == bytes([2, 10, 21])  # fatal unexpected_message, type alert
        finally:
            raw_sock.close()
