#!/bin/sh
# inside.sh - what the kTLS guest runs, in the host's root (chroot, read-only).
#
#   inside.sh REPO test    tests/test_ktls.py, with pytest
#   inside.sh REPO bench   the bulk-send comparison (05-ssl/ktls_bench.py)
#
# The repository is read-only here: no bytecode files, no pytest cache; the
# binaries were built on the host before the guest started.
set -u
cd "$1" || exit 1
export PYTHONDONTWRITEBYTECODE=1
case $2 in
test)
    exec /usr/bin/python3 -m pytest -q -p no:cacheprovider --color=no -rs tests/test_ktls.py ;;
bench)
    exec /usr/bin/python3 05-ssl/ktls_bench.py ;;
*)
    echo "inside.sh: unknown run '$2'" >&2
    exit 2 ;;
esac
