/*
 * hot_restart.c - stage 07: replace a running server by a new version of
 * itself without refusing, resetting or dropping a single client. The old
 * generation hands its listening socket, and every idle keep-alive
 * connection, to the new one with SCM_RIGHTS; the new one never bind()s.
 *
 * Run it:    ./hot_restart                narrated demo: a client keeps asking
 *                                         while the server upgrades itself twice
 *            ./hot_restart --serve --strategy handoff --pid-file /tmp/hr.pid
 *            kill -HUP $(cat /tmp/hr.pid)     ->  the next generation takes over
 *            curl http://127.0.0.1:PORT/      ->  served by generation 2 pid P
 *            python3 07-hot-restart/measure.py --markdown   10 upgrades per strategy
 * Break it:  --fail-upgrade exec|crash   the next generation never becomes ready;
 *            the old one notices, keeps serving, and loses nothing
 *            --strategy stop-start|reuseport|reuseport-migrate   the naive ways
 *
 * The handoff, step by step (this file, top to bottom):
 *   1. SIGHUP: the old generation opens an abstract Unix socket and fork()s +
 *      exec()s /proc/self/exe (server.c); the new one connects to it, and each
 *      checks the other with SO_PEERCRED (check_upgrade_peer);
 *   2. the old sends the listening socket (hand_over_listener) and goes on
 *      accepting; the new one receives it, and says READY (take_over);
 *   3. only then does the old stop accepting: from now on the queue of the
 *      one listening socket is the new one's; nothing waits in a queue
 *      that is about to vanish, because the queue never vanishes;
 *   4. the old hands over its idle keep-alive connections (nothing buffered
 *      in its memory: whatever the client sent since sits in the socket and
 *      travels with it), finishes the busy ones and hands them over too,
 *      then says DONE and exits (old_stops_accepting, hand_over_conns).
 *
 * Article: Q2's three steps (sendmsg with SCM_RIGHTS, recvmsg, close the
 * sender's copy), used beyond the article's product: not from a dispatcher
 * to a worker, but from one version of the program to the next, as nginx's
 * binary upgrade, HAProxy's -x, Envoy's hot restart and Facebook's Socket
 * Takeover do (README.md, "Why").
 * See also: unix(7) (SCM_RIGHTS, SO_PEERCRED), sendmsg(2), recvmsg(2),
 * socket(7), listen(2), ../03-scm-rights/fdpass.h.
 */
#define _GNU_SOURCE
#include "hot_restart.h"
#include "../03-scm-rights/fdpass.h"
#include "../common/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- 1. who is at the other end of the upgrade channel ------------------ */

/* Checks the peer of chan: our uid, and the pid we expect. Owns nothing. */
/* lesson: check_upgrade_peer */
int check_upgrade_peer(int chan, pid_t expect_pid)
{
	/* SO_PEERCRED is what the kernel recorded at connect(2): it cannot be
	 * forged by the peer. Anyone on the machine can connect to an abstract
	 * socket; only our own next generation may receive our listener. */
	pid_t pid;
	uid_t uid;
	gid_t gid;
	if (fdpass_peer(chan, &pid, &uid, &gid) < 0)
		return -1;
	if (uid != getuid() || pid != expect_pid) {
		errno = EPERM;
		return -1;
	}
	return 0;
}
/* end lesson */

/* ---- 2. the old generation passes its listener -------------------------- */

/* Sends our listening socket (handoff) or only its port (the naive
 * strategies) on g->chan. We keep our copy and go on accepting. */
/* lesson: hand_over_listener */
int hand_over_listener(struct gen *g)
{
	char msg[MSG_MAX];
	if (g->strategy != ST_HANDOFF)
		return send_msg(g->chan, "PORT %d", g->port);
	int len = snprintf(msg, sizeof msg, "LISTEN %d", g->port);
	char next[16];
	snprintf(next, sizeof next, "gen%d", g->generation + 1);
	ev(&g->n, "listener", next, "fd=%d", g->lfd);
	/* The message in flight holds its own reference to the socket: the
	 * listen queue is now shared by both generations, and stays alive as
	 * long as either of them holds it. We do not stop accepting yet. */
	if (fdpass_send(g->chan, msg, (size_t)len, &g->lfd, 1, NULL) != FDPASS_OK)
		return -1;
	say(&g->n, "sent the listening socket (fd %d) to generation %d; still accepting",
	    g->lfd, g->generation + 1);
	return 0;
}
/* end lesson */

/* ---- 3. the new generation takes over ----------------------------------- */

/* New side: connect to the old generation's abstract socket, check it, get
 * the listener (g->lfd, ours from now on) or bind one, and say READY. */
/* lesson: take_over */
int take_over(struct gen *g)
{
	char msg[MSG_MAX];
	struct sockaddr_un sa;
	socklen_t salen = upgrade_addr(&sa, g->old_pid); /* "\0hot-restart.<old pid>" */
	hold_here(g, HOLD_CONNECT);
	g->chan = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (g->chan < 0 || connect(g->chan, (struct sockaddr *)&sa, salen) < 0)
		return -1;
	if (check_upgrade_peer(g->chan, g->old_pid) < 0)
		return -1;
	if (wait_readable(g->chan, WAIT_MS) <= 0) {
		errno = ETIMEDOUT;
		return -1;
	}
	int fd = -1;
	struct fdpass_rx rx = { .buf = msg, .cap = sizeof msg - 1, .fds = &fd, .max_fds = 1 };
	if (fdpass_recv(g->chan, &rx) != FDPASS_OK)
		return -1;
	msg[rx.len] = '\0';
	if (g->strategy == ST_HANDOFF) {
		/* The same open file description as the old one's: same port,
		 * same queue. No bind(2), so no moment without a listener. */
		if (rx.nfds != 1 || sscanf(msg, "LISTEN %d", &g->port) != 1) {
			if (rx.nfds == 1)
				close(fd);
			errno = EPROTO;
			return -1;
		}
		g->lfd = fd;
		ev(&g->n, "got_listener", NULL, "fd=%d", fd);
		say(&g->n, "received the listening socket as fd %d; never bound a port", fd);
	} else {
		if (rx.nfds == 1)
			close(fd);
		if (sscanf(msg, "PORT %d", &g->port) != 1) {
			errno = EPROTO;
			return -1;
		}
		hold_here(g, HOLD_BIND);
		g->lfd = bind_listener(g->strategy, g->port, NULL);
		if (g->lfd < 0)
			return -1;
		say(&g->n, "bound its own listening socket on port %d", g->port);
	}
	if (g->fail == FAIL_CRASH) {
		/* --fail-upgrade crash: a new version that dies while starting. */
		say(&g->n, "--fail-upgrade crash: dying before READY");
		setrlimit(RLIMIT_CORE, &(struct rlimit){ 0, 0 });
		abort();
	}
	hold_here(g, HOLD_READY);
	char old[16];
	snprintf(old, sizeof old, "gen%d", g->generation - 1);
	ev(&g->n, "ready", old, NULL);
	notify(g, "ready %d %d %d", g->generation, (int)getpid(), g->port);
	if (write_pid_file(g) < 0 || send_msg(g->chan, "READY") < 0)
		return -1;
	g->up = UP_TAKING;
	return 0;
}
/* end lesson */

/* ---- 4. the old one stops accepting, hands over and drains -------------- */

/* READY came: stop accepting (we keep the listener open, unpolled, in case
 * the new one dies before DONE), then hand over every idle connection. */
/* lesson: old_stops_accepting */
int old_stops_accepting(struct gen *g)
{
	/* Not close(lfd): connections that arrive now queue on the one socket
	 * both of us hold, and the new generation accepts them. */
	g->accepting = 0;
	say(&g->n, "generation %d is ready: stopped accepting, the queue is its own now",
	    g->generation + 1);
	ev(&g->n, "stop_accepting", NULL, NULL);
	size_t idle[FDPASS_MAX_FDS], k = 0;
	for (size_t i = 0; i < MAX_CONNS; i++) {
		/* Idle: no byte of a request in OUR buffer. Bytes the client sent
		 * since sit in the socket's receive queue and travel with it. */
		if (g->conns[i].fd >= 0 && g->conns[i].len == 0)
			idle[k++] = i;
		if (k == FDPASS_MAX_FDS || (k > 0 && i == MAX_CONNS - 1)) {
			if (hand_over_conns(g, idle, k) < 0)
				return -1;
			k = 0;
		}
	}
	g->up = UP_DRAINING;
	g->deadline_ms = now_ms() + WAIT_MS;
	return 0;
}
/* end lesson */

/* Sends the connections in slots[0..count) (all idle) in one message, waits
 * for the new generation's ACK, then closes our copies: they are its own. */
/* lesson: hand_over_conns */
int hand_over_conns(struct gen *g, const size_t *slots, size_t count)
{
	int fds[FDPASS_MAX_FDS];
	char msg[MSG_MAX + 8 * FDPASS_MAX_FDS], ack[MSG_MAX];
	int len = snprintf(msg, MSG_MAX, "CONN %zu", count);
	for (size_t i = 0; i < count; i++) {
		const struct conn *c = &g->conns[slots[i]];
		fds[i] = c->fd;
		len += snprintf(msg + len, sizeof msg - (size_t)len, " %d", c->id);
	}
	if (fdpass_send(g->chan, msg, (size_t)len, fds, count, NULL) != FDPASS_OK)
		return -1;
	/* Until the ACK we still hold every one of them: if the new one dies
	 * now, nothing is lost but what it had already taken. */
	if (recv_msg(g->chan, ack, sizeof ack, WAIT_MS) < 0)
		return -1;
	if (strncmp(ack, "ACK ", 4) != 0) {
		errno = EPROTO;
		return -1;
	}
	char next[16];
	snprintf(next, sizeof next, "gen%d", g->generation + 1);
	for (size_t i = 0; i < count; i++) {
		if (g->conns[slots[i]].id)
			ev(&g->n, "hand_over", next, "conn=%c", g->conns[slots[i]].id);
		conn_close(g, slots[i]);
	}
	g->handed += (int)count;
	say(&g->n, "handed %zu idle connection(s) to generation %d, closed my copies",
	    count, g->generation + 1);
	return 0;
}
/* end lesson */

/* New side: one message from the old generation: connections to adopt, or
 * DONE / end of file (the old one is gone). 0, or -1/errno. */
/* lesson: receive_from_old */
int receive_from_old(struct gen *g)
{
	char msg[MSG_MAX + 8 * FDPASS_MAX_FDS];
	int fds[FDPASS_MAX_FDS];
	struct fdpass_rx rx = { .buf = msg, .cap = sizeof msg - 1, .fds = fds,
				.max_fds = FDPASS_MAX_FDS };
	int st = fdpass_recv(g->chan, &rx);
	msg[st == FDPASS_OK ? rx.len : 0] = '\0';
	if (st == FDPASS_OK && rx.nfds > 0) {
		/* Every descriptor gets a slot, or is closed by conn_add(): none
		 * is left unaccounted for, whatever the payload says. */
		char *p = msg + (strncmp(msg, "CONN ", 5) == 0 ? 5 : rx.len);
		strtol(p, &p, 10);
		for (size_t i = 0; i < rx.nfds; i++) {
			int id = (int)strtol(p, &p, 10);
			if (conn_add(g, fds[i], id) >= 0 && id)
				ev(&g->n, "adopt", NULL, "conn=%c", id);
		}
		return send_msg(g->chan, "ACK %zu", rx.nfds);
	}
	/* DONE, or EOF, or nonsense (whose fds fdpass_recv closed): either
	 * way the old generation has nothing more for us. */
	close(g->chan);
	g->chan = -1;
	g->up = UP_NONE;
	say(&g->n, "the old generation is done (%s): I am the only one serving",
	    st == FDPASS_OK ? msg : fdpass_strerror(st));
	return 0;
}
/* end lesson */
