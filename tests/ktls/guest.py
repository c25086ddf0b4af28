#!/usr/bin/env python3
"""guest.py - boot Debian's kernel under qemu and run the kTLS tests in it.

    guest.py KERNEL_TREE INITRAMFS test|bench [--timeout SECONDS]

The guest (tests/ktls/init) mounts this machine's root read-only over 9p and
runs tests/ktls/inside.sh from this repository, so it tests the binaries
built here. Its console is our stdout, line by line, as it comes; its last
line "ktls-guest: exit N" becomes our exit status. KVM is used when
/dev/kvm can be opened and the guest comes up within KVM_BOOT seconds;
otherwise qemu emulates the CPU (TCG): slower, and we say so. A guest that
does not finish within --timeout is killed, and we exit 1 saying so.
"""

import argparse
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KVM_BOOT = 20.0  # seconds for a KVM guest to come up before we give up on KVM
EXIT = re.compile(r"^ktls-guest: exit (\d+)\s*$")
UP = re.compile(r"^ktls-guest: up")


def qemu_cmd(tree, initramfs, run, accel):
    (vmlinuz,) = sorted((tree / "boot").glob("vmlinuz-*"))
    append = " ".join([
        "console=ttyS0", "quiet", "panic=-1", "rdinit=/init",
        f"ktls.dir={ROOT}", f"ktls.run={run}", f"ktls.san={os.environ.get('SAN', '0') or '0'}",
    ])
    return [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-no-reboot",
        "-accel", accel, "-cpu", "max", "-smp", "2", "-m", "1536",
        "-display", "none", "-monitor", "none", "-serial", "stdio",
        "-kernel", str(vmlinuz), "-initrd", str(initramfs), "-append", append,
        # the host's root, read-only; multidevs=remap keeps inode numbers of
        # different host file systems apart
        "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
    ]


def boot(cmd, timeout, up_within=None):
    """Run one guest, echoing its console. Returns (status, boot_s, total_s);
    status is None if it hung (or did not come up within up_within)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    buf, status, up = b"", None, None
    try:
        while status is None:
            now = time.monotonic() - start
            limit = up_within if up is None and up_within else timeout
            if now >= limit:
                break
            r, _, _ = select.select([proc.stdout], [], [], limit - now)
            if not r:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                print(line, flush=True)
                if up is None and UP.match(line):
                    up = time.monotonic() - start
                if m := EXIT.match(line):
                    status = int(m.group(1))
    finally:
        if proc.poll() is None:
            try:  # after "exit N" the guest powers off by itself; a bound all the same
                proc.wait(timeout=10 if status is not None else 0)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    return status, up, time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree", type=Path)
    ap.add_argument("initramfs", type=Path)
    ap.add_argument("run", choices=["test", "bench"])
    ap.add_argument("--timeout", type=float, default=170.0)
    a = ap.parse_args()

    status = None
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        print(f"guest: trying KVM (bounded: up within {KVM_BOOT:.0f} s)", flush=True)
        status, up, total = boot(qemu_cmd(a.tree, a.initramfs, a.run, "kvm"), a.timeout, KVM_BOOT)
        if up is None:
            print("guest: KVM did not come up; falling back to TCG", flush=True)
    else:
        print("guest: no usable /dev/kvm: qemu emulates the CPU (TCG), slower", flush=True)
        up = None
    if up is None:
        status, up, total = boot(qemu_cmd(a.tree, a.initramfs, a.run, "tcg"), a.timeout)
    if status is None:
        print(f"guest: no 'ktls-guest: exit N' line within {a.timeout:.0f} s "
              f"({'never came up' if up is None else 'hung after boot'}): killed", flush=True)
        return 1
    print(f"guest: up after {up:.1f} s, finished after {total:.1f} s, exit {status}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
