#!/bin/sh
# inside.sh - what the kTLS guest runs, in the host's root (chroot, read-only).
#
#   inside.sh REPO test    tests/test_ktls.py, with pytest
#   inside.sh REPO bench   the bulk-send comparison (05-ssl/ktls_bench), a markdown
#                          table per suite; then stage 06 under wrk, the workers'
#                          record layer against kernel TLS (bench/ktls_06.py)
#
# The repository is read-only here: no bytecode files, no pytest cache; the
# binaries were built on the host before the guest started.
set -u
cd "$1" || exit 1
export PYTHONDONTWRITEBYTECODE=1
case $2 in
test)
    exec /usr/bin/python3 -m pytest -q -p no:cacheprovider --color=no -rs --durations=5 tests/test_ktls.py ;;
bench)
    # 16 MiB: under TCG qemu emulates every instruction (AES-NI included)
    # and TLS runs at a few MiB/s; a few hundred MiB would take hours
    for suite in TLS_AES_128_GCM_SHA256 TLS_CHACHA20_POLY1305_SHA256; do
        05-ssl/ktls_bench --mib 16 --rounds 5 --suite $suite || exit 1
        echo
    done
    exec /usr/bin/python3 bench/ktls_06.py ;;
*)
    echo "inside.sh: unknown run '$2'" >&2
    exit 2 ;;
esac
