/*
 * strategies.c - stage 07: the listening socket of a generation, and the
 * naive upgrades the handoff is measured against (README.md, "Why").
 *
 *   stop-start          the old closes its listener, the new one binds:
 *                       between the two, connect(2) meets ECONNREFUSED, and
 *                       whatever waited in the old accept queue is reset;
 *   reuseport           the new one binds beside the old (SO_REUSEPORT), then
 *                       the old closes: connections the kernel had already
 *                       queued on the old socket are reset;
 *   reuseport-migrate   the same, where net.ipv4.tcp_migrate_req=1 (Linux
 *                       5.14) lets the kernel move that queue to the new one.
 * In all three the old one cannot pass on its idle keep-alive connections:
 * it closes them, and their clients must notice and reconnect.
 *
 * Run it:    ./hot_restart --serve --strategy reuseport   (then kill -HUP)
 * See also:  socket(7) (SO_REUSEPORT), ip-sysctl.rst (tcp_migrate_req),
 *            net/ipv4/inet_connection_sock.c (inet_csk_listen_stop).
 */
#define _GNU_SOURCE
#include "hot_restart.h"
#include "../common/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

const char *const strategy_names[] = { "handoff", "stop-start", "reuseport", "reuseport-migrate",
				       NULL };

int bind_listener(enum strategy s, int port, int *bound)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof sa;
	/* SO_REUSEPORT on both sockets (same uid) lets two listeners share
	 * the port; the kernel then spreads new connections between them. */
	int reuseport = s == ST_REUSEPORT || s == ST_REUSEPORT_MIGRATE;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
	    bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, SOMAXCONN) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	if (bound)
		*bound = ntohs(sa.sin_port);
	return fd;
}

void naive_before_fork(struct gen *g)
{
	if (g->strategy != ST_STOP_START)
		return;
	/* The port is free for the new one only once we let go of it. */
	close(g->lfd);
	g->lfd = -1;
	g->accepting = 0;
	say(&g->n, "stop-start: closed my listener; until generation %d binds, "
		   "connect() is refused", g->generation + 1);
}

/* The new generation listens. What is left of ours goes. */
int naive_old_on_ready(struct gen *g)
{
	if (g->lfd >= 0) {
		g->accepting = 0;
		hold_here(g, HOLD_CLOSE);
		/* Closing a listener resets every connection still in its accept
		 * queue (inet_csk_listen_stop) - unless tcp_migrate_req moves them
		 * to another listener of the same SO_REUSEPORT group. */
		close(g->lfd);
		g->lfd = -1;
		say(&g->n, "%s: closed my listener; what waited in its queue is %s",
		    strategy_names[g->strategy],
		    g->strategy == ST_REUSEPORT_MIGRATE ? "migrated" : "reset");
	}
	/* Idle keep-alive connections (answered before, nothing buffered)
	 * go; a connection still waiting for its first request gets its
	 * answer, with "Connection: close", like a busy one. */
	int closed = 0;
	for (size_t i = 0; i < MAX_CONNS; i++)
		if (g->conns[i].fd >= 0 && g->conns[i].len == 0 && g->conns[i].served > 0) {
			conn_close(g, i);
			closed++;
		}
	say(&g->n, "closed %d idle keep-alive connection(s): their clients must reconnect", closed);
	ev(&g->n, "closed_idle", NULL, "count=%d", closed);
	g->up = UP_DRAINING;
	g->deadline_ms = now_ms() + WAIT_MS;
	return 0;
}
