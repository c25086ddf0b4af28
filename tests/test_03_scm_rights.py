"""Stage 03: passing a descriptor with SCM_RIGHTS - the demo and --serve.

(The interop commands `send` and `recv` and the hostile-sender matrix are in
test_03_interop.py.) Checked from outside: a different descriptor number for
the same kernel file (same inode, kcmp), FD_CLOEXEC set on the received
descriptor and not on the sender's, a shared file offset and shared
O_NONBLOCK, the bytes the client got back, and each break-it switch
producing its failure.
"""

import os
import re
import signal
import socket

import pytest

from conftest import WAIT, mermaid_of, read_trace, readme_diagrams, run

PROG = "03-scm-rights/scm_rights"


def trace_of(tmp_path, *args, expect=0):
    path = tmp_path / "t.jsonl"
    r = run(PROG, *args, "--trace", path, expect=expect)
    return r, read_trace(path)


def one(t, role, event):
    (e,) = [e for e in t if e["role"] == role and e["event"] == event]
    return e


def test_socket_same_file_different_number(tmp_path):
    r, t = trace_of(tmp_path)
    acc = one(t, "parent", "accept")
    got = one(t, "worker", "recvmsg")
    assert got["fd"] != acc["fd"]  # numbers are per process ...
    assert (got["dev"], got["inode"]) == (acc["dev"], acc["inode"])  # ... the socket is one
    assert one(t, "parent", "kcmp") == {**one(t, "parent", "kcmp"), "same": 1, "fd": acc["fd"], "worker_fd": got["fd"]}
    # /proc/PID/fd of both, as the narration quotes it
    proc = [l for l in r.narration("parent") if l.startswith("/proc/")][0]
    assert proc.count(f"socket:[{acc['inode']}]") == 2
    res = r.result()
    assert res["delivered"] == "1" and res["same_file"] == "1" and res["worker_fd"] == str(got["fd"])
    # FD_CLOEXEC: set on the received copy (MSG_CMSG_CLOEXEC), clear on the sender's
    assert got["cloexec"] == 1 and res["parent_cloexec"] == "0"
    # the client was served by the worker, whose pid the trace names
    (reply,) = [l for l in r.narration("client") if l.startswith("got back")]
    assert f'"[worker {got["pid"]}] hello over a passed descriptor"' in reply


def test_received_socket_does_not_survive_exec(tmp_path):
    r, t = trace_of(tmp_path)
    inode = one(t, "parent", "accept")["inode"]
    assert r.narration("exec"), "the exec'd program did not report"
    assert not [l for l in r.narration("exec") if f"socket:[{inode}]" in l]
    assert one(t, "exec", "inherited")["sockets"] == 0


def test_no_cloexec_leaks_into_exec(tmp_path):
    r, t = trace_of(tmp_path, "--no-cloexec")
    inode = one(t, "parent", "accept")["inode"]
    wfd = one(t, "worker", "recvmsg")["fd"]
    assert one(t, "worker", "exec")["cloexec"] == 0
    assert f"after exec I hold fd {wfd} -> socket:[{inode}]" in r.narration("exec")
    assert one(t, "exec", "inherited")["sockets"] == 1  # the event the diagram draws


def test_file_offset_and_status_flags_are_shared(tmp_path):
    r, t = trace_of(tmp_path, "--kind", "file")
    worker_read = one(t, "worker", "read")
    shared = one(t, "parent", "shared")
    assert shared["offset"] == worker_read["bytes"] > 0  # the worker's read moved OUR offset
    assert shared["nonblock"] == 1  # O_NONBLOCK set by the worker
    got = one(t, "worker", "recvmsg")
    assert shared["cloexec"] == 0 and got["cloexec"] == 1
    opened = one(t, "parent", "open")
    assert (got["dev"], got["inode"]) == (opened["dev"], opened["inode"])
    assert r.result()["same_file"] == "1"


def test_pipe_write_end_works_in_the_worker(tmp_path):
    r, t = trace_of(tmp_path, "--kind", "pipe")
    wrote = one(t, "worker", "write")
    read = one(t, "parent", "read")
    assert read["bytes"] == wrote["bytes"] and read["eof"] == 1
    made, got = one(t, "parent", "pipe"), one(t, "worker", "recvmsg")
    assert (got["dev"], got["inode"]) == (made["dev"], made["inode"])


def test_zero_byte_on_stream_never_arrives(tmp_path):
    r, t = trace_of(tmp_path, "--zero-byte")
    assert one(t, "parent", "sendmsg")["result"] == 0
    assert one(t, "worker", "recvmsg")["result"] == "nothing"
    assert one(t, "client", "reply")["served"] == 0  # closed unserved ...
    assert [l for l in r.narration("client") if l.startswith("no reply, end-of-file")]  # ... not left open
    assert r.result()["delivered"] == "0"


def test_zero_byte_on_seqpacket_arrives(tmp_path):
    r, t = trace_of(tmp_path, "--zero-byte", "--channel", "seqpacket")
    got = one(t, "worker", "recvmsg")
    acc = one(t, "parent", "accept")
    assert got["bytes"] == 0 and (got["dev"], got["inode"]) == (acc["dev"], acc["inode"])
    assert r.result()["delivered"] == "1"
    assert one(t, "client", "reply")["served"] == 1


def test_small_control_truncates_and_closes_everything(tmp_path):
    r, t = trace_of(tmp_path, "--small-control")
    got = one(t, "worker", "recvmsg")
    assert got["ctrunc"] == 1 and got["closed"] == 2  # 2 installed (padding), 1 dropped by the kernel
    assert one(t, "parent", "lost_closed")["all"] == 1  # both pipe read ends saw EOF
    assert one(t, "client", "reply")["served"] == 0
    assert [l for l in r.narration("client") if l.startswith("no reply, end-of-file")]
    assert r.result()["delivered"] == "0"


def test_classic_receiver_leaks_what_fdpass_recv_closes(tmp_path):
    """Two descriptors to a receiver built for one: the classic receiver's
    length check rejects the message and both stay open (no EOF on the pipe
    within the bound while the worker lives; EOF once it exits);
    fdpass_recv, sent the same kind of message, closes both at once."""
    r, t = trace_of(tmp_path, "--classic-receiver")
    classic, fixed = [e for e in t if e["role"] == "worker" and e["event"] == "recvmsg"]
    assert classic["receiver"] == "classic" and classic["fd"] == -1 and classic["in_cmsg"] == 2
    assert fixed["receiver"] == "fdpass" and fixed["result"] == "toomany" and fixed["closed"] == 2
    assert one(t, "parent", "leak")["eof"] == 0
    assert one(t, "parent", "fixed")["eof"] == 1
    assert one(t, "parent", "exit_closes")["eof"] == 1
    assert one(t, "client", "reply")["served"] == 0
    assert r.result() == {"receiver": "classic", "leaked": "1", "fixed": "1", "closed_at_exit": "1"}


def _holders(pids, inode):
    want = f"socket:[{inode}]"
    found = []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                    found.append((pid, int(fd)))
            except OSError:
                pass
    return found


def _server_inode(c):
    me, peer = c.getsockname()[1], c.getpeername()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            x = line.split()
            if int(x[1].split(":")[1], 16) == peer and int(x[2].split(":")[1], 16) == me:
                return int(x[9])
    raise AssertionError("no server end in /proc/net/tcp")


def test_serve_worker_holds_the_connection_parent_does_not(serve):
    s = serve(PROG)
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"hi\n")
        reply = c.recv(100)
        m = re.fullmatch(rb"\[worker (\d+)\] hi\n", reply)
        assert m, reply
        worker = int(m.group(1))
        holders = _holders([s.pid, worker], _server_inode(c))
        assert [p for p, _ in holders] == [worker]  # the parent closed its copy
        fd = holders[0][1]
        with open(f"/proc/{worker}/fdinfo/{fd}") as f:
            flags = int(re.search(r"flags:\s+(\d+)", f.read()).group(1), 8)
        assert flags & os.O_CLOEXEC  # received with MSG_CMSG_CLOEXEC
        c.shutdown(socket.SHUT_WR)
        assert c.recv(1) == b""  # the worker closes when the client is done


def test_serve_echoes_bytes_as_they_came(serve):
    s = serve(PROG)
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"a\0b\n")
        assert re.fullmatch(rb"\[worker \d+\] a\0b\n", c.recv(100))


def test_serve_many_clients_at_once(serve):
    s = serve(PROG)
    clients = [socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) for _ in range(20)]
    try:
        for i, c in enumerate(clients):
            c.sendall(b"n%d\n" % i)
        for i, c in enumerate(clients):
            assert c.recv(100).endswith(b"] n%d\n" % i)
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize(
    "args",
    [
        [], ["--kind", "file"], ["--kind", "pipe"], ["--zero-byte"], ["--small-control"],
        ["--no-cloexec"], ["--classic-receiver"],
    ],
)
def test_readme_diagrams_are_real_runs(args):
    assert mermaid_of(run(PROG, *args, "--mermaid")) in readme_diagrams("03-scm-rights")


# fdpass_test runs each case over each socket type (CASE.VARIANT); a
# datagram socket has no end-of-stream, so that one case is not run there.
FDPASS_VARIANTS = ["stream", "seqpacket", "dgram"]
FDPASS_CASES = [
    f"{case}.{variant}"
    for case in [
        "send_count", "kernel_scm_max_fd", "empty_payload", "cloexec", "too_many", "ctrunc",
        "no_fd", "eof_is_not_no_fd", "foreign_cmsg", "peer_gone", "large_payload", "misuse",
        "nonblocking", "pidfd_cmsg", "eintr",
    ]
    for variant in FDPASS_VARIANTS
    if (case, variant) != ("eof_is_not_no_fd", "dgram")
]


def test_fdpass_unit_cases_all_listed():
    assert run("03-scm-rights/fdpass_test", "--list").lines == FDPASS_CASES


@pytest.mark.parametrize("case", FDPASS_CASES)
def test_fdpass_unit(case):
    """fdpass.c on the paths no demo reaches (03-scm-rights/fdpass_test.c)."""
    lines = run("03-scm-rights/fdpass_test", case).lines
    if len(lines) == 1 and lines[0].startswith(f"skip {case}: "):
        pytest.skip(lines[0])  # the running kernel lacks what the case needs
    assert lines == [f"ok {case}"]


@pytest.mark.parametrize(
    "args",
    [
        ["--kind", "socketpair"],
        ["--zero-byte", "--small-control"],
        ["--no-cloexec", "--kind", "file"],
        ["--zero-byte", "--kind", "pipe"],
        ["--small-control", "--kind", "file"],
        ["--classic-receiver", "--no-cloexec"],
        ["--classic-receiver", "--channel", "seqpacket"],
        ["--classic-receiver", "--kind", "pipe"],
        ["--serve", "--zero-byte"],
        ["--serve", "--mermaid"],
        ["--port", "5"],
        ["--no-such-switch"],
        ["extra"],
    ],
)
def test_bad_arguments(args):
    assert len(run(PROG, *args, expect=2).stderr.splitlines()) == 1


def test_runtime_failure_names_the_call(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run(PROG, "--serve", "--port", busy.getsockname()[1], expect=1)
    assert r.stderr.count("\n") == 1 and "listen" in r.stderr and os.strerror(98) in r.stderr
    r = run(PROG, "--trace", tmp_path / "no-such-dir" / "t.jsonl", expect=1)
    assert r.stderr.count("\n") == 1 and "trace" in r.stderr and os.strerror(2) in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_ends_cleanly_on_signal_with_a_client_connected(serve, sig):
    s = serve(PROG)
    with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as c:
        c.sendall(b"hi\n")
        assert c.recv(100).endswith(b"] hi\n")  # the worker holds it now
        s.stop(sig)  # exit 0, worker reaped, nothing left behind
        assert c.recv(1) == b""  # and the connection was closed


# ------------------------------------------------ newer kernels (newer_kernels.c)

NEWER = "03-scm-rights/newer_kernels"
LIMIT = 16  # the RLIMIT_NOFILE newer_kernels sets for the toomanyrefs section


def newer(section):
    r = run(NEWER, section)
    (line,) = [l for l in r.lines if l.startswith(("result: ", "skip: "))]
    if line.startswith("skip: "):
        pytest.skip(line)  # the running kernel lacks the feature; the line says which
    res = r.result()
    assert res.pop("feature") == section
    return res


def test_pidfd_getfd_copies_a_descriptor_without_a_socket():
    res = newer("pidfd_getfd")
    assert res["same_file"] == "1" and res["cloexec"] == "1" and res["works"] == "1"
    # ptrace access is required: a process run as nobody is refused
    assert res["unprivileged"] == ("EPERM" if os.geteuid() == 0 else "not_tried")


def test_so_peerpidfd_cannot_name_another_process_after_exit():
    assert newer("peerpidfd") == {"pid_matches": "1", "after_exit": "ESRCH", "fdinfo_pid": "-1"}


def test_scm_pidfd_comes_with_every_message():
    assert newer("scm_pidfd") == {"pidfd_received": "1"}


def test_so_passrights_off_refuses_descriptors():
    assert newer("passrights") == {"send": "EPERM", "data": "1", "nothing_in_flight": "1"}


def test_descriptors_in_flight_are_limited_by_rlimit_nofile():
    res = newer("toomanyrefs")
    # the kernel refuses a message once the user's in-flight count is already
    # above the limit (too_many_unix_fds: inflight > RLIMIT_NOFILE), so one
    # descriptor per message gets LIMIT + 1 messages out
    assert res["error"] == "ETOOMANYREFS" and int(res["sent"]) == LIMIT + 1
    if os.geteuid() == 0:  # CAP_SYS_RESOURCE lifts it: all 4 * LIMIT went
        assert res["privileged_error"] == "none" and int(res["privileged_sent"]) == 4 * LIMIT


def test_scm_rights_is_ignored_on_tcp():
    assert newer("inet") == {"sent": "1", "received": "1", "fds": "0", "dropped": "1"}


@pytest.mark.parametrize("args", [["nosuch"], ["inet", "--mermaid"]])
def test_newer_kernels_bad_arguments(args):
    assert len(run(NEWER, *args, expect=2).stderr.splitlines()) == 1
