"""bench_modes.py - what before-handshake and after-handshake cost (stage 05 README).

Run from the repository root after `make`:  /usr/bin/python3 05-ssl/bench_modes.py
Measures, with one worker: connections per second (handshake + 2 lines + close,
one after the other), and for a 64 MiB echo in 1 KiB lines the wall time and
the CPU time of the worker (OpenSSL's SSL_read/SSL_write in before-handshake,
record.c on EVP in after-handshake) and of the parent, from /proc/PID/stat.
Not a test: numbers vary with the machine and its load.
"""
import socket, ssl, subprocess, sys, time, re, os
prog = str(__import__("pathlib").Path(__file__).resolve().parent / "ssl_handoff")
def ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname=False; c.verify_mode=ssl.CERT_NONE
    c.minimum_version = ssl.TLSVersion.TLSv1_3; return c
def start(mode, *a):
    p = subprocess.Popen([prog, "--serve", "--port", "0", "--mode", mode, "--workers", "1", *a], stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline().split(":")[1])
    while "pre-forked" not in p.stdout.readline(): pass
    import threading
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, port
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def kids(pid):
    return [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]
def conns(mode, n=200):
    p, port = start(mode)
    t = time.perf_counter()
    c = ctx()
    for i in range(n):
        s = c.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
        f = s.makefile("rb")
        s.sendall(b"a\n"); f.readline(); s.sendall(b"b\n"); f.readline()
        f.close(); s.close()
    dt = time.perf_counter() - t
    p.terminate(); p.wait()
    return n / dt
def bulk(mode, mib=64, suite=None):
    p, port = start(mode, *(["--ciphersuites", suite] if suite else []))
    w = kids(p.pid)[0]
    s = ctx().wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    f = s.makefile("rb")
    s.sendall(b"x\n"); f.readline()
    c0 = cpu(w); cp0 = cpu(p.pid)
    line = b"y" * 1023 + b"\n"
    total = mib * 1024 * 1024 // 1024
    t = time.perf_counter()
    chunk = line * 16
    sent = 0; got = 0
    for i in range(total // 16):
        s.sendall(chunk)
        for _ in range(16): got += len(f.readline())
    dt = time.perf_counter() - t
    c1 = cpu(w); cp1 = cpu(p.pid)
    f.close(); s.close(); p.terminate(); p.wait()
    return dt, c1 - c0, cp1 - cp0
for m in ["naive","before-handshake", "after-handshake"]:
    if m == "naive": continue
    print(m, "conn/s (2 lines each):", round(conns(m, 1000), 1))
for suite in ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]:
    for m in ["before-handshake", "after-handshake"]:
        dt, wc, pc = bulk(m, 64, suite)
        print(suite, m, "64MiB echo: wall %.2fs worker cpu %.2fs parent cpu %.2fs" % (dt, wc, pc))
