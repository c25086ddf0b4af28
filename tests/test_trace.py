"""`make trace-NN`: each stage's demo under strace shows the system calls of
its lesson (and the demo still succeeds under strace)."""

import subprocess

import pytest

from conftest import ROOT, RUN

EXPECT = {
    "01": ["accept", "clone", "close("],
    "02": ["socketpair(AF_UNIX, SOCK_STREAM", "socketpair(AF_UNIX, SOCK_SEQPACKET", "close("],
    "03": ["sendmsg(", "SCM_RIGHTS", "recvmsg(", "MSG_CMSG_CLOEXEC", "kcmp("],
    "04": ["accept4(", "sendmsg(", "SCM_RIGHTS", "recvfrom(", "recvmsg("],
}


@pytest.mark.parametrize("stage", sorted(EXPECT))
def test_trace_shows_the_lesson_syscalls(stage):
    r = subprocess.run(
        ["make", "-s", f"trace-{stage}"], cwd=ROOT, capture_output=True, text=True, timeout=RUN
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for call in EXPECT[stage]:
        assert call in r.stderr, f"{call!r} not in the strace output of stage {stage}"
    assert "result:" in r.stdout
