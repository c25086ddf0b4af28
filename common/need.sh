#!/bin/sh
# need.sh - make sure a tool the Makefile needs is here, from Debian's packages.
#
#   common/need.sh python            print a python3 that can import pytest
#   common/need.sh cmd NAME PACKAGE  make sure command NAME exists
#   common/need.sh file PATH PACKAGE make sure PATH exists (a header, say)
#   common/need.sh deb PACKAGE DIR   unpack Debian's PACKAGE into DIR, without
#                                    installing it (a metapackage is followed
#                                    to the package it depends on first)
#
# When something is missing and we run as root on Debian, it is installed with
# apt-get (and we say so on stderr); otherwise we stop with the exact command
# to run. The `python3` on PATH may be an interpreter without pytest (pyenv,
# a venv), so candidates are tried in order and Debian's /usr/bin/python3 last.
set -eu

PYTEST_PKGS="python3-pytest python3-pytest-timeout"

install() {
    if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null; then
        echo "need.sh: installing $* with apt-get (Debian packages)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 || true
        apt-get install -y -qq --no-install-recommends "$@" >&2
    else
        echo "need.sh: missing $*; install it with:  sudo apt-get install -y $*" >&2
        exit 1
    fi
}

find_python() {
    for py in ${PYTHON:-} python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 &&
           "$py" -c 'import pytest, pytest_timeout' >/dev/null 2>&1; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

case "${1:-}" in
python)
    find_python && exit 0
    # shellcheck disable=SC2086
    install $PYTEST_PKGS
    find_python || { echo "need.sh: no python3 with pytest after installing" >&2; exit 1; }
    ;;
cmd)
    command -v "$2" >/dev/null 2>&1 || install "$3"
    ;;
file)
    [ -e "$2" ] || install "$3"
    ;;
deb)
    # apt-get download needs no root; dpkg-deb -x unpacks without running the
    # package's scripts, so nothing outside DIR changes (not /boot, say).
    [ -e "$3/.unpacked" ] && exit 0
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
        { echo "need.sh: $2 is a Debian package and this is not Debian (no apt-get)" >&2; exit 1; }
    mkdir -p "$3/.deb"
    pkg=$2
    while :; do
        rm -f "$3"/.deb/*.deb
        (cd "$3/.deb" && apt-get download -qq "$pkg" 2>/dev/null) ||
            { echo "need.sh: apt-get download $pkg failed (try: apt-get update)" >&2; exit 1; }
        deb=$(ls "$3"/.deb/*.deb)
        dpkg-deb -x "$deb" "$3"
        # a metapackage ships nothing outside /usr/share (its documentation):
        # take the package it depends on
        [ -n "$(dpkg-deb -c "$deb" | grep -v ' \./\(usr/\(share/.*\)\?\)\?$')" ] && break
        pkg=$(dpkg-deb -f "$deb" Depends | sed 's/[ ,(|].*//')
        echo "need.sh: $2 is a metapackage; unpacking $pkg" >&2
    done
    echo "need.sh: unpacked $pkg into $3 (not installed)" >&2
    rm -rf "$3/.deb"
    touch "$3/.unpacked"
    ;;
*)
    echo "usage: $0 python | cmd NAME PACKAGE | file PATH PACKAGE | deb PACKAGE DIR" >&2
    exit 2
    ;;
esac
