#!/usr/bin/env python3
"""mkinitramfs.py - the guest's initramfs: busybox, /init, and the kernel
modules the guest needs, nothing else.

    mkinitramfs.py KERNEL_TREE BUSYBOX OUT.cpio.gz

KERNEL_TREE is Debian's linux-image package unpacked (boot/, lib/modules/V/).
The modules come with everything they depend on, as the kernel's own
modules.dep says (written here with busybox depmod, which also writes the
modules.alias that lets the guest's modprobe answer "tcp-ulp-tls": the
kernel asks for that name when a program sets TCP_ULP "tls"). The archive is
the "newc" cpio format of the kernel's
Documentation/filesystems/ramfs-rootfs-initramfs.rst, written by hand.
"""

import gzip
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# virtio PCI transport and 9p: the host's root file system, read-only.
# tls: kernel TLS. The crypto modules: the AEADs of the three TLS 1.3 suites
# the kernel offers, and their x86 implementations.
MODULES = [
    "virtio_pci", "9pnet_virtio", "9p", "tls",
    "gcm", "ghash-generic", "ghash-clmulni-intel", "aesni-intel",
    "chacha20poly1305", "chacha-x86_64", "poly1305-x86_64", "chacha_generic", "poly1305_generic",
]


INODES = itertools.count(2)


def newc(out, name, mode, data=b"", rdev=(0, 0)):
    """One entry: a 110-byte ASCII header, the name, the data, each padded to 4."""
    name_b = name.encode() + b"\0"
    fields = [next(INODES), mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
    out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name_b)
    out.write(b"\0" * (-(110 + len(name_b)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def main():
    tree, busybox, dest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    (ver,) = os.listdir(tree / "lib/modules")
    src = tree / "lib/modules" / ver
    with tempfile.TemporaryDirectory() as tmp:
        # modules.dep of the whole package, to resolve dependencies
        full = Path(tmp) / "full"
        shutil.copytree(src / "kernel", full / "lib/modules" / ver / "kernel", symlinks=True)
        subprocess.run([busybox, "depmod", "-b", full, ver], check=True)
        deps, by_name = {}, {}
        for line in (full / "lib/modules" / ver / "modules.dep").read_text().splitlines():
            mod, _, rest = line.partition(":")
            deps[mod] = rest.split()
            by_name[Path(mod).stem.replace("-", "_")] = mod
        want, todo = set(), []
        for m in MODULES:
            key = m.replace("-", "_")
            if key not in by_name:
                sys.exit(f"mkinitramfs: no module {m} in {src}")
            todo.append(by_name[key])
        while todo:
            m = todo.pop()
            if m not in want:
                want.add(m)
                todo.extend(deps[m])
        # only those, then their own modules.dep and modules.alias
        small = Path(tmp) / "small"
        for m in want:
            (small / "lib/modules" / ver / m).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(full / "lib/modules" / ver / m, small / "lib/modules" / ver / m)
        subprocess.run([busybox, "depmod", "-b", small, ver], check=True)

        with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            for d in ["bin", "sbin", "dev", "proc", "sys", "host", "lib", "lib/modules"]:
                newc(out, d, 0o40755)
            newc(out, "dev/console", 0o20600, rdev=(5, 1))  # the kernel opens it for /init
            newc(out, "bin/busybox", 0o100755, busybox.read_bytes())
            for applet in ["sh", "mount", "umount", "modprobe", "insmod", "ip", "cat", "echo",
                           "chroot", "poweroff", "mkdir", "sleep", "uname", "env", "dmesg"]:
                newc(out, f"bin/{applet}", 0o120777, b"busybox")
            newc(out, "sbin/modprobe", 0o120777, b"../bin/busybox")
            newc(out, "init", 0o100755, (HERE / "init").read_bytes())
            base = small / "lib"
            for path in sorted(base.rglob("*")):
                rel = "lib/" + str(path.relative_to(base))
                if path.is_dir():
                    newc(out, rel, 0o40755)
                else:
                    newc(out, rel, 0o100644, path.read_bytes())
            newc(out, "TRAILER!!!", 0)
    print(f"mkinitramfs: {dest}: busybox and {len(want)} modules of Linux {ver}")


if __name__ == "__main__":
    main()
