/*
 * dup_race.c - EXERCISE (stage 04): hand a connection off so that nothing is
 * stolen, under select, poll and epoll alike.
 *
 * This is 04-dup-race/dup_race.c with the lesson core of --mode fixed taken
 * out: write it where the TODO is (exercises/04-hand-off/README.md has the
 * task and the hints), then `make exercise-04` builds stage 04 with this
 * file and runs its tests. Everything outside the TODO is the stage's own
 * code; --mode naive and --mode article, the mistakes, are there to compare.
 *
 * A dispatcher shaped like the article's product: the parent runs one event
 * loop (select, poll or epoll) over the listening socket and the connections
 * it accepts, and hands every connection to a pre-forked worker over a Unix
 * socket (stage 03's fdpass). The worker reads the connection until the
 * client's end-of-file and replies "worker PID got N bytes".
 *
 *   --mode naive    send client_fd and leave it in the watch set
 *   --mode article  the article's step 2 literally: dup, send the duplicate,
 *                   close the original - nothing else
 *   --mode fixed    stop watching (FD_CLR / drop the pollfd / EPOLL_CTL_DEL),
 *                   send, close. No dup anywhere.
 *   --child-dup     the worker does the article's step 3 (dup what it
 *                   received, close the received one); changes nothing
 *
 * This file is the lesson, top to bottom: accept, hand off, what the loop
 * does with a readable connection, the loop, the worker. The race is forced
 * without sleeps by race.c (the client's bytes are queued before the hand-off,
 * the worker is held before its recvmsg(), the parent's loop turns once in
 * between); main.c is the command line; watchset.c the three pollers.
 *
 * Run it:    ./dup_race                      naive, article, fixed; a table
 *            ./dup_race --poller epoll       the same under epoll: the trap
 *            ./dup_race --mode naive --poller poll --child-dup
 *            ./dup_race --stress 1000        natural timing, how often it bites
 *            ./dup_race --serve --mode naive [--port N]   for nc / Python
 * Break it:  --mode naive; --mode article --poller epoll; --no-fd-clr (select
 *            or poll: close a watched number without dropping it from the set)
 *
 * Article: Q2, step 2 (dup, send, close) and step 3 (the child dups again).
 * See also: select(2) ("EBADF: An invalid file descriptor was given in one of
 * the sets"), poll(2) (POLLNVAL), epoll(7) ("Will closing a file descriptor
 * cause it to be removed from all epoll interest lists?"), epoll_ctl(2),
 * dup(2), close(2), unix(7) (SCM_RIGHTS), recv(2) MSG_DONTWAIT.
 */
#define _GNU_SOURCE
#include "dup_race.h"
#include "../03-scm-rights/fdpass.h"
#include "../common/cli.h"
#include "../common/util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the parent: accept, hand off --------------------------------------- */

/*
 * on_accept: accepts one connection and puts its new descriptor into the
 * watch set, as the article's loop does with every connection; the
 * descriptor stays the parent's, queued to be handed off at the end of this
 * turn of the loop.
 */
static void on_accept(struct parent *p)
{
	int c = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0) {
		if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
			return;
		die("accept4");
	}
	int id = ++p->next_id;
	if (c >= MAX_FDNUM || p->npend == MAX_PENDING) {
		say(p->n, "accept() -> fd %d: no room to track it; closing it", c);
		close(c);
		return;
	}
	set_owner(p, c, id);
	p->st.connections++;
	say(p->n, "accept() -> fd %d: connection #%d", c, id);
	ev(p->n, "accept", NULL, "conn=%d fd=%d inode=%lu", id, c, inode_of(c));
	force_queued(p, c); /* forced rounds: the client's bytes are queued now */
	if (watch_add(&p->w, c, id) < 0) {
		say(p->n, "cannot watch fd %d (%s); closing it", c, strerror(errno));
		set_owner(p, c, 0);
		close(c);
		return;
	}
	ev(p->n, "watch", NULL, "fd=%d", c);
	say(p->n, "fd %d goes into my %s set, like every connection I accept; now hand it off", c,
	    poller_names[p->c->poller]);
	p->pend_fd[p->npend] = c;
	p->pend_id[p->npend++] = id;
}

/* send_to_worker: sends fd (and the connection id) to the worker; fd stays
 * open in the parent - the message holds a reference of its own. */
static void send_to_worker(struct parent *p, int fd, int id)
{
	int32_t conn = id;
	ev(p->n, "sendmsg", "worker", "conn=%d fd=%d", id, fd);
	int st = fdpass_send(p->chan, &conn, sizeof conn, &fd, 1, NULL);
	if (st != FDPASS_OK)
		die("sendmsg to the worker: %s", fdpass_strerror(st));
}

/*
 * hand_off: sends connection c to the worker in the configured mode. naive
 * keeps c open and watched; article closes c and keeps an unwatched
 * duplicate; fixed unwatches and closes c. Either way the worker owns the
 * connection afterwards, and the parent owns whatever it kept.
 */
static void hand_off(struct parent *p, int c, int id)
{
	if (owner_of(p, c) != id) {
		say(p->n, "connection #%d was closed by my own loop before I could hand it off: its "
			  "client gets no reply", id);
		ev(p->n, "lost", NULL, "conn=%d", id);
		p->dropped++;
		return;
	}
	const char *poller = poller_names[p->c->poller];
	switch (p->c->mode) {
	case NAIVE:
		send_to_worker(p, c, id);
		say(p->n, "sendmsg(fd %d) to the worker; fd %d stays open and in my %s set", c, c,
		    poller);
		break;
	case ARTICLE: {
		int d = dup(c);
		if (d < 0)
			die("dup");
		set_owner(p, d, id);
		if (p->ndups < MAX_FDNUM)
			p->dups[p->ndups++] = d;
		ev(p->n, "dup", NULL, "fd=%d dup=%d", c, d);
		send_to_worker(p, d, id);
		/* A select loop must FD_CLR a number it closes, a poll loop drop
		 * its pollfd: that, not the dup, takes c out of the watch set. An
		 * epoll loop just closes and trusts close() to unregister it. */
		close_watched(&p->w, c);
		set_owner(p, c, 0);
		ev(p->n, "close", NULL, "fd=%d", c);
		char how[48]; /* what close_watched() did: the narration hides none of it */
		if (p->c->poller == P_EPOLL)
			snprintf(how, sizeof how, "close(%d), no EPOLL_CTL_DEL", c);
		else if (p->w.no_fd_clr)
			snprintf(how, sizeof how, "close(%d), left in the set", c);
		else if (p->c->poller == P_SELECT)
			snprintf(how, sizeof how, "FD_CLR(%d), close(%d)", c, c);
		else
			snprintf(how, sizeof how, "drop fd %d's pollfd, close(%d)", c, c);
		say(p->n, "article: dup(%d) -> %d, sendmsg(fd %d), %s; fd %d stays open", c, d, d,
		    how, d);
		break;
	}
	case FIXED:
		/* TODO(hand_off_fixed): send connection c (number id) to the worker
		 * (send_to_worker) so that nothing in this loop ever reads it again,
		 * under select, poll and epoll alike, and so that afterwards the
		 * parent holds nothing of it: the worker owns it. No dup().
		 * - the loop learns what to watch from p->w (watchset.h);
		 * - my table of who is behind each number: set_owner(p, c, 0) once
		 *   c no longer names this connection here;
		 * - the trace, for the tests: ev(p->n, "unwatch", NULL, "fd=%d", c)
		 *   when you stop watching c, ev(p->n, "close", NULL, "fd=%d", c)
		 *   when you close it.
		 * Until you write it, the run stops here: exit 1, with a message. */
		die("--mode fixed under %s: hand_off() of connection #%d (fd %d) is not written yet",
		    poller, id, c);
		break;
	default:
		break;
	}
	p->handed++;
}

/* ---- the parent: what the loop does with a readable connection ---------- */

/*
 * on_conn_event: the loop found a connection number readable and reads it,
 * as the article's loop would (MSG_DONTWAIT: never block on a wrong guess).
 * In a dispatcher every connection has been handed off by now, so whatever
 * it reads is stolen. On end-of-file it closes its own number; it never
 * touches the worker's descriptors.
 */
static void on_conn_event(struct parent *p, const struct hit *h)
{
	const char *poller = poller_names[p->c->poller];
	int now = owner_of(p, h->fd); /* who is behind this number in my table, right now */
	if (h->nval) {
		p->st.stale++;
		if (first_time(p, h->tag)) {
			say(p->n, "poll() -> POLLNVAL on fd %d: I closed it but left it in my pollfd array; "
				  "dropping it", h->fd);
			ev(p->n, "stale", NULL, "fd=%d conn=%d what=POLLNVAL", h->fd, h->tag);
		}
		watch_del(&p->w, h->fd);
		return;
	}
	/* An event about a number I closed, or for another connection than the
	 * one now behind it. (Under epoll: the registration is keyed on the
	 * number *and* the open file description, and the description lives on
	 * - in my duplicate, in flight, in the worker - so close() did not end it.) */
	int stale = now != h->tag;
	if (stale) {
		p->st.stale++;
		if (now != 0)
			p->st.misdirected++;
	}
	char buf[4096];
	ssize_t r;
	do
		r = recv(h->fd, buf, sizeof buf, MSG_DONTWAIT);
	while (r < 0 && errno == EINTR);
	int err = errno;
	if (stale && now == 0) {
		if (first_time(p, h->tag)) {
			say(p->n, "%s reports fd %d (connection #%d), but I closed fd %d: "
				  "read -> %s. The registration outlived the number", poller,
			    h->fd, h->tag, h->fd, r < 0 ? strerror(err) : "data");
			ev(p->n, "stale", NULL, "fd=%d conn=%d what=%s", h->fd, h->tag,
			   r < 0 && err == EBADF ? "EBADF" : "read");
		}
	} else if (stale) {
		ev(p->n, "misdirected", NULL, "fd=%d was=%d now=%d bytes=%zd inode=%lu", h->fd,
		   h->tag, now, r > 0 ? r : 0, inode_of(h->fd));
		say(p->n, "%s reports fd %d for connection #%d, but fd %d is connection #%d "
			  "now: I read %zd bytes of the WRONG connection", poller, h->fd, h->tag,
		    h->fd, now, r > 0 ? r : 0);
	}
	if (r > 0) {
		p->st.stolen += r;
		if (!stale) {
			say(p->n, "%s says fd %d is readable: read %zd bytes meant for the worker",
			    poller, h->fd, r);
			say(p->n, "STOLEN: the worker will never see those %zd bytes", r);
			ev(p->n, "steal", NULL, "fd=%d conn=%d bytes=%zd", h->fd, now, r);
		}
	} else if (r == 0 && now != 0) {
		say(p->n, "fd %d: end-of-file; closing my copy", h->fd);
		ev(p->n, "eof", NULL, "fd=%d conn=%d", h->fd, now);
		close_watched(&p->w, h->fd);
		set_owner(p, h->fd, 0);
	}
}

/*
 * loop_once: one turn of the parent's event loop - accept first, then the
 * connection events, then the hand-offs, so an event for a stale number
 * meets the connection that just took it over. accept_ok = 0 leaves the
 * listener alone (a forced look must not start a new round). Returns the
 * number of events, 0 on a timeout or a failed wait.
 */
int loop_once(struct parent *p, int timeout_ms, int accept_ok)
{
	struct hit hits[256];
	p->handed = 0;
	p->conn_events = 0;
	int n = watch_wait(&p->w, timeout_ms, hits, 256);
	if (n < 0) {
		if (errno == EINTR)
			return 0;
		if (errno != EBADF)
			die("%s", poller_names[p->c->poller]);
		/* select() fails as a whole when the set names a closed number,
		 * and does not say which one: the loop has to find it itself. */
		p->st.stale++;
		say(p->n, "select() -> EBADF: my fd_set still names a number I closed without "
			  "FD_CLR; finding and dropping it");
		ev(p->n, "stale", NULL, "what=EBADF");
		watch_drop_closed(&p->w);
		return 0;
	}
	for (int i = 0; i < n; i++)
		if (hits[i].tag == TAG_LISTEN && accept_ok)
			on_accept(p);
		else if (hits[i].tag < 0)
			on_machinery(p, hits[i].tag);
	for (int i = 0; i < n; i++)
		if (hits[i].tag > 0) {
			p->conn_events++;
			on_conn_event(p, &hits[i]);
		}
	for (int i = 0; i < p->npend; i++)
		hand_off(p, p->pend_fd[i], p->pend_id[i]);
	p->npend = 0;
	return n;
}

/* ---- the worker: pre-forked, it gets connections only by SCM_RIGHTS ----- */

/*
 * worker: receives connections on chan one by one, reads each to the
 * client's end-of-file, replies and closes it; the worker owns every
 * descriptor it receives. hold_r >= 0 (forced rounds): waits there before
 * each recvmsg(), until the parent has had its look. Returns the exit status.
 */
int worker(struct nar *n, const struct cfg *c, int chan, int hold_r)
{
	for (;;) {
		if (!wait_for_release(hold_r, chan))
			return 0; /* the parent is done with us */
		int32_t conn = 0;
		int fds[1];
		struct fdpass_rx rx = { .buf = &conn, .cap = sizeof conn, .fds = fds, .max_fds = 1,
					.flags = FDPASS_NEED_FD };
		int st = fdpass_recv(chan, &rx);
		if (st == FDPASS_EOF)
			return 0;
		if (st != FDPASS_OK)
			die("worker: fdpass_recv: %s", fdpass_strerror(st));
		int fd = fds[0];
		ev(n, "recvmsg", NULL, "conn=%d fd=%d inode=%lu", (int)conn, fd, inode_of(fd));
		say(n, "recvmsg() -> fd %d: connection #%d is mine now", fd, (int)conn);
		if (c->child_dup) {
			/* The article's step 3. A new number for the same open file
			 * description: the receive queue, and its readiness, are the
			 * description's, not the number's. */
			int d = dup(fd);
			if (d < 0)
				die("worker: dup");
			ev(n, "dup", NULL, "fd=%d dup=%d", fd, d);
			close(fd);
			say(n, "--child-dup: dup(%d) -> %d, close(%d) (the article's step 3)",
			    fd, d, fd);
			fd = d;
		}
		int timed_out;
		long got = read_to_eof(c->poller, fd, WAIT_MS, &timed_out);
		if (got < 0)
			die("worker: epoll_create1/epoll_ctl");
		if (timed_out)
			say(n, "no end-of-file from the client within %d ms; answering anyway", WAIT_MS);
		ev(n, "read", NULL, "conn=%d bytes=%ld", (int)conn, got);
		say(n, "%s says fd %d is readable; read %ld bytes, then end-of-file",
		    poller_names[c->poller], fd, got);
		reply_and_close(n, c, chan, fd, (int)conn, got);
	}
}
