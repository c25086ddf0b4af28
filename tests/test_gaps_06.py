"""Stage 06: the fork-per-conn model's children, read from outside. A
handoff worker is exec'd, so close-on-exec alone would clear what it must
not hold; a fork-per-conn child is not, and holds exactly what the dispatcher
closed for it (close_inherited in dispatcher.c) - or more."""

import socket

from conftest import WAIT
from test_06_hardening import fd_table, sockets
from test_06_prefork_server import PROG, children, read_response


def test_fork_per_conn_child_holds_its_connection_and_nothing_of_the_dispatcher(serve):
    """Two keep-alive clients, each served by a child of its own. Each
    child's sockets are its one connection: not the listening socket, not the
    other child's connection, nothing the dispatcher holds; besides that only
    what every process of the server has (stdio, the test's watch pipe) and
    its signalfd and epoll."""
    s = serve(PROG, "--model", "fork-per-conn")
    conns = [socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) for _ in range(2)]
    try:
        for c in conns:
            c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # keep-alive: the child stays
            assert read_response(c)[0] == 200
        kids = children(s.pid)
        assert len(kids) == 2
        tables = {pid: fd_table(pid) for pid in [s.pid, *kids]}
        inherited = [t for t in tables[s.pid].values()
                     if not t.startswith(("socket:[", "anon_inode:"))]
        for k in kids:
            mine = set(sockets(tables[k]).values())
            theirs = {t for pid, table in tables.items() if pid != k
                      for t in sockets(table).values()}
            # one socket, which neither the dispatcher nor the other child has
            assert len(mine) == 1 and not mine & theirs, (k, tables)
            rest = [t for t in tables[k].values() if not t.startswith("socket:[")]
            assert sorted(rest) == sorted(
                inherited + ["anon_inode:[signalfd]", "anon_inode:[eventpoll]"])
    finally:
        for c in conns:
            c.close()
