#!/usr/bin/env python3
"""bench/profile.py - where handoff and nginx spend their work, per request.

  python3 bench/profile.py [--perf] [SECONDS]     (make bench-profile)

For stage 06's `handoff` and `handoff --tls` and for nginx over HTTP and
HTTPS (bench/nginx.conf.in, as in bench/run.py), under the same wrk load as
`make bench`, new connections (Connection: close) and keep-alive:

  * system calls per request, by name: `perf stat` on the kernel's syscall
    tracepoints (syscalls:sys_enter_*), attached to the server and all its
    processes, the counts divided by the requests wrk completed. Unlike
    `strace -c`, this does not stop the server at every call.
  * the server's CPU time per request (user + system, all its processes,
    from /proc), in the same run.
  * with --perf, where that CPU time goes: `perf record -e cpu-clock` on the
    server's processes while wrk runs again, the share of samples per binary
    or library (kernel, libc, libssl, libcrypto, the server) and the top
    symbols.

Prints a plain-text report. See bench/README.md ("Why handoff is behind
nginx") for what it showed on the machine the README was written on.
"""

import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: the same servers, started the same way)

SECONDS = 3


def pids_of(root):
    """root and every process whose parent is root."""
    return [root, *run.children(root)]


def own_cpu(pid):
    """CPU seconds of pid alone: the dispatcher, or nginx's master."""
    return sum(t for c, _, _, t in run.processes() if c == pid) / os.sysconf("SC_CLK_TCK")


def wrk_requests(port, close, scheme, seconds):
    cmd = ["wrk", "-t2", f"-c{run.CONNS}", f"-d{seconds}s"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [f"{scheme}://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 60)
    m = re.search(r"(\d+) requests in", out.stdout)
    if out.returncode != 0 or not m:
        sys.exit(f"profile: wrk failed: {out.stdout} {out.stderr}")
    return int(m.group(1))


# The calls a server of this kind makes; raw_syscalls:sys_enter counts them all.
SYSCALLS = ["accept4", "accept", "read", "write", "readv", "writev", "recvfrom", "sendto",
            "recvmsg", "sendmsg", "epoll_wait", "epoll_pwait", "epoll_ctl", "close", "shutdown",
            "setsockopt", "getsockopt", "getpid", "getrandom", "brk", "mmap", "munmap", "futex",
            "fcntl", "ioctl", "sendfile64", "openat", "newfstatat", "clock_gettime"]


def syscall_counts(server_pid, port, close, scheme):
    """{syscall: calls per request} for the server's processes under wrk,
    counted by the kernel's tracepoints (perf stat): the server runs at full
    speed, nothing stops it at each call as strace would."""
    with tempfile.NamedTemporaryFile("r", suffix=".perf") as out:
        cmd = ["perf", "stat", "-x", ",", "-o", out.name, "-p", ",".join(map(str, pids_of(server_pid))),
               "-e", "raw_syscalls:sys_enter", "-e", "context-switches"]
        for name in SYSCALLS:
            cmd += ["-e", f"syscalls:sys_enter_{name}"]
        st = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)  # perf says nothing when it is attached: give it a moment
            cpu0, first0 = run.tree_cpu(server_pid), own_cpu(server_pid)
            n = wrk_requests(port, close, scheme, SECONDS)
            cpu, first = run.tree_cpu(server_pid) - cpu0, own_cpu(server_pid) - first0
        finally:
            st.send_signal(signal.SIGINT)
            st.wait(timeout=run.WAIT)
        calls = {"CPU µs": cpu * 1e6}
        for line in out.read().splitlines():
            f = line.split(",")
            if len(f) >= 3 and f[0].isdigit():
                name = f[2].replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter", "all")
                name = name.replace("context-switches", "(switches)")
                calls[name] = int(f[0])
    per = {k: v / n for k, v in calls.items() if v}
    per["first %"] = 100 * first / cpu if cpu else 0.0  # a share, not per request
    return per, n


def perf_profile(server_pid, port, close, scheme):
    """Where the server's own CPU time goes: perf record on its processes
    only (the machine may be busy with other work), top symbols."""
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "perf.data"
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-o", str(data),
                                "-p", ",".join(map(str, pids_of(server_pid)))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            wrk_requests(port, close, scheme, SECONDS)
        finally:
            rec.send_signal(signal.SIGINT)
            rec.wait(timeout=60)
        rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso,sym",
                              "--percent-limit", "1.5"], capture_output=True, text=True, timeout=120)
        dso = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso",
                              "--percent-limit", "1"], capture_output=True, text=True, timeout=120)
    keep = [l for l in dso.stdout.splitlines() + rep.stdout.splitlines() if l.strip() and not l.startswith("#")]
    return keep[:40]


def main():
    args = sys.argv[1:]
    perf = "--perf" in args
    args = [a for a in args if a != "--perf"]
    global SECONDS
    if args:
        SECONDS = int(args[0])
    servers = [("handoff", "http"), (run.NGINX, "http"), (run.HTTPS, "https"), (run.NGINXS, "https")]
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as d:
        for close in (True, False):
            table = collections.OrderedDict()
            for name, scheme in servers:
                if name in (run.NGINX, run.NGINXS):
                    p, hp, sp = run.start_nginx(d)
                    port = sp if scheme == "https" else hp
                else:
                    p, port = run.start_server("handoff", ["--tls"] if scheme == "https" else [])
                try:
                    table[name] = syscall_counts(p.pid, port, close, scheme)
                    if perf:
                        print(f"== perf: {name}, {'new connections' if close else 'keep-alive'}")
                        print("\n".join(perf_profile(p.pid, port, close, scheme)))
                finally:
                    run.stop(p)
            kind = "new connection per request" if close else "keep-alive"
            print(f"== system calls per request, {kind} (server side, all processes)")
            names = sorted({k for t, _ in table.values() for k in t},
                           key=lambda k: -max(t.get(k, 0) for t, _ in table.values()))
            print(f"{'':>16}" + "".join(f"{n:>16}" for n in table))
            for k in names:
                if k not in ("CPU µs", "first %") and max(t.get(k, 0) for t, _ in table.values()) >= 0.01:
                    print(f"{k:>16}" + "".join(f"{t.get(k, 0):>16.2f}" for t, _ in table.values()))
            print(f"{'(requests)':>16}" + "".join(f"{n:>16}" for _, n in table.values()))
            print(f"{'CPU µs/request':>16}" + "".join(f"{t['CPU µs']:>16.1f}" for t, _ in table.values()))
            print(f"{'% in 1st process':>16}" + "".join(f"{t['first %']:>16.0f}" for t, _ in table.values()))


if __name__ == "__main__":
    try:
        main()
    finally:
        for proc in list(run.live):
            run.stop(proc, signal.SIGKILL)
