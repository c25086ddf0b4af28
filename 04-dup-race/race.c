/*
 * race.c - stage 04's machinery: the processes of a run (the parent, its
 * pre-forked worker, the built-in client), and how the race is forced
 * without sleeps - or, with --stress, left to natural timing.
 *
 * Forced rounds, per connection: the client connects, writes, shuts down
 * its write side and tells the parent over a pipe; the parent accepts and
 * waits (bounded) until those bytes are queued on the socket; it hands the
 * connection off while the worker is held on a pipe before its recvmsg();
 * it rings its own doorbell (a pipe in its watch set) and runs one turn of
 * its loop - its chance to look; only then is the worker released.
 *
 * Part of stage 04 (./dup_race); the lesson is in dup_race.c.
 * See also: pipe(2), ioctl FIONREAD (unix(7), tcp(7)), fcntl(2) F_DUPFD_CLOEXEC.
 */
#define _GNU_SOURCE
#include "dup_race.h"
#include "../01-basic-fork/checkpoint.h"
#include "../common/cli.h"
#include "../common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *const mode_names[] = { "naive", "article", "fixed", NULL };

/* ---- the parent's bookkeeping ------------------------------------------- */

void set_owner(struct parent *p, int fd, int id)
{
	if (fd >= 0 && fd < MAX_FDNUM)
		p->owner[fd] = id;
}

int owner_of(const struct parent *p, int fd)
{
	return fd >= 0 && fd < MAX_FDNUM ? p->owner[fd] : 0;
}

/* 1 the first time it is asked about connection id: stale events are
 * narrated once per connection, counted every time. */
int first_time(struct parent *p, int id)
{
	unsigned i = (unsigned)id % MAX_TOLD;
	if (p->told[i])
		return 0;
	p->told[i] = 1;
	return 1;
}

/* The socket's inode: which connection a descriptor really is. */
unsigned long inode_of(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

int count_fds(void)
{
	int fds[16];
	return fd_list(fds, 16);
}

/* Reads exactly len bytes, each wait bounded. 0 ok, -1/errno (EPIPE on EOF). */
static int read_exact(int fd, void *buf, size_t len, int timeout_ms)
{
	char *p = buf;
	while (len > 0) {
		ssize_t r = read_within(fd, p, len, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0) {
			errno = EPIPE;
			return -1;
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

/* ---- forcing the race --------------------------------------------------- */

/* Forced rounds: the client writes right after connecting; wait (bounded)
 * until its bytes sit in this socket's receive queue, so they are there for
 * the whole time the descriptor is in flight. */
void force_queued(struct parent *p, int fd)
{
	if (!p->forced)
		return;
	int q = 0;
	if (wait_readable(fd, WAIT_MS) > 0 && ioctl(fd, FIONREAD, &q) == 0 && q > 0) {
		say(p->n, "(forcing the race) the client's %d bytes are already queued on fd %d", q, fd);
		ev_harness(p->n, "queued", NULL, "fd=%d bytes=%d", fd, q);
	} else {
		say(p->n, "(forcing the race) no bytes from the client within %d ms", WAIT_MS);
	}
}

/* The worker's reports (--stress: counted as they come). */
static void read_reports(struct parent *p)
{
	ssize_t r = read(p->chan, p->rbuf + p->rlen, sizeof p->rbuf - p->rlen);
	if (r < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (r <= 0)
		die("the worker is gone (read from channel)");
	p->rlen += (size_t)r;
	size_t off = 0;
	for (; p->rlen - off >= sizeof(struct report); off += sizeof(struct report)) {
		struct report rep;
		memcpy(&rep, p->rbuf + off, sizeof rep);
		p->st.delivered += rep.bytes;
		p->reports++;
	}
	memmove(p->rbuf, p->rbuf + off, p->rlen - off);
	p->rlen -= off;
}

/* A watched descriptor of the machinery is ready: the doorbell, the
 * worker's channel (--stress), the signalfd (--serve). */
void on_machinery(struct parent *p, int tag)
{
	if (tag == TAG_BELL) {
		char b[16];
		while (read(p->bell_r, b, sizeof b) > 0)
			;
	} else if (tag == TAG_CHAN) {
		read_reports(p);
	} else if (tag == TAG_SIG) {
		struct signalfd_siginfo si;
		while (read(p->sfd, &si, sizeof si) == sizeof si)
			p->stop = 1;
	}
}

/* The forced look: ring my own doorbell (a pipe in the watch set), so the
 * iteration returns at once with everything that is ready right now. */
void look(struct parent *p)
{
	say(p->n, "one turn of my %s loop while the descriptor is in flight:", poller_names[p->c->poller]);
	ev(p->n, "look", NULL, "poller=%s", poller_names[p->c->poller]);
	if (write(p->bell_w, "!", 1) != 1)
		die("write doorbell");
	int stale_before = (int)p->st.stale;
	loop_once(p, WAIT_MS, 0);
	if (!p->conn_events && p->st.stale == stale_before)
		say(p->n, "nothing to read for me: no connection of mine is in the set any more");
}

void release_worker(struct parent *p, int id)
{
	ev(p->n, "release", "worker", "conn=%d", id);
	if (write(p->hold_w, "g", 1) != 1)
		die("write to the worker's hold pipe");
}

void wait_report(struct parent *p)
{
	struct report rep;
	if (read_exact(p->chan, &rep, sizeof rep, WAIT_MS * 4) < 0)
		die("waiting for the worker's report");
	p->st.delivered += rep.bytes;
}

/* ---- the worker's side of the harness ----------------------------------- */

/* Forced rounds: waits on the hold pipe until released (0 when the parent
 * closed it: done); then, in every mode, until the parent's message is
 * there. 1 = go on to recvmsg(). */
int wait_for_release(int hold_r, int chan)
{
	if (hold_r >= 0) {
		char go;
		ssize_t r = read_within(hold_r, &go, 1, WAIT_MS * 6);
		if (r == 0)
			return 0;
		if (r < 0)
			die("worker: waiting to be released");
	}
	if (wait_readable(chan, WAIT_MS * 6) <= 0)
		die("worker: no message from the parent");
	return 1;
}

/* Replies "worker PID got N bytes" on fd and closes it (the worker's last
 * use of the connection); then reports to the parent on chan. */
void reply_and_close(struct nar *n, const struct cfg *c, int chan, int fd, int conn, long got)
{
	/* The tests: the connection being served, the channel, the hold pipe -
	 * no other client's connection, no descriptor of the parent's. */
	if (checkpoint(c->checkpoint, "worker-conn") < 0)
		die("worker: checkpoint");
	char reply[96];
	int len = snprintf(reply, sizeof reply, "worker %d got %ld bytes\n", (int)getpid(), got);
	struct report rep = { conn, (int32_t)got };
	/* Events first: nobody can act on them before they are recorded. */
	ev(n, "reply", "client", "conn=%d got=%ld", conn, got);
	ev_harness(n, "done", "parent", "conn=%d bytes=%ld", conn, got);
	write_all(fd, reply, (size_t)len); /* a client that left: EPIPE, ignored */
	close(fd);
	if (write_all(chan, &rep, sizeof rep) < 0)
		die("worker: report to parent");
}

/* ---- the built-in client: a process of its own, as a real client -------- */

static int client_round(struct nar *n, int port, int conn, int note_w, long *sent, long *got)
{
	char payload[64];
	int len = snprintf(payload, sizeof payload, "connection %d: hello, worker\n", conn);
	ev(n, "connect", "parent", "conn=%d", conn); /* before: accept() cannot come first */
	int s = connect_loopback(port);
	if (s < 0)
		die("client: connect");
	ev(n, "send", "worker", "conn=%d bytes=%d", conn, len);
	if (write_all(s, payload, (size_t)len) < 0)
		die("client: write");
	shutdown(s, SHUT_WR); /* "that is all": the worker reads until this end-of-file */
	say(n, "connection #%d: sent %d bytes and shut down my write side", conn, len);
	*sent = len;
	if (note_w >= 0) {
		struct note nt = { NOTE_SENT, conn, len, 0, 0 };
		if (write_all(note_w, &nt, sizeof nt) < 0)
			die("client: note to parent");
	}
	char reply[128];
	*got = -1;
	ssize_t r = read_line(s, reply, sizeof reply, WAIT_MS * 3);
	int wpid;
	long g;
	if (r > 0 && sscanf(reply, "worker %d got %ld bytes", &wpid, &g) == 2)
		*got = g;
	close(s);
	return 0;
}

static int client_forced(struct nar *n, int port, int go_r, int note_w)
{
	char go;
	for (int conn = 1; read_within(go_r, &go, 1, WAIT_MS * 6) == 1; conn++) {
		long sent, got;
		client_round(n, port, conn, note_w, &sent, &got);
		if (got < 0)
			say(n, "connection #%d: no reply from a worker", conn);
		else if (got == 0)
			say(n, "connection #%d: I sent %ld bytes; the worker says it got 0  <- none reached it",
			    conn, sent);
		else
			say(n, "connection #%d: I sent %ld bytes; the worker says it got %ld%s", conn, sent,
			    got, got < sent ? "  <- the rest never reached it" : "");
		ev(n, "reply", NULL, "conn=%d sent=%ld got=%ld", conn, sent, got);
		struct note nt = { NOTE_GOT, conn, got, 0, 0 };
		if (write_all(note_w, &nt, sizeof nt) < 0)
			die("client: note to parent");
	}
	return 0;
}

static int client_stress(struct nar *n, int port, long count, int note_w)
{
	long sent_total = 0, robbed = 0, noreply = 0;
	for (long i = 1; i <= count; i++) {
		long sent, got;
		client_round(n, port, (int)i, -1, &sent, &got);
		sent_total += sent;
		noreply += got < 0;
		robbed += got < sent; /* what the worker says it got, against what I sent */
	}
	struct note nt = { NOTE_SUMMARY, (int32_t)count, sent_total, robbed, noreply };
	return write_all(note_w, &nt, sizeof nt) < 0 ? 1 : 0;
}

/* ---- the processes of a run --------------------------------------------- */

/*
 * Moves a descriptor of the machinery (channel, pipes, epoll instance) up
 * to 50 or above, so that the numbers the lesson talks about - the listener,
 * the connections, the duplicates - are the low ones, the same in every run.
 */
int high(int fd)
{
	int h = fcntl(fd, F_DUPFD_CLOEXEC, 50);
	if (h < 0)
		die("fcntl(F_DUPFD_CLOEXEC)");
	close(fd);
	return h;
}

static void high2(int fds[2])
{
	fds[0] = high(fds[0]);
	fds[1] = high(fds[1]);
}

/* Listener, channel, pipes, the worker (and a client unless serving). */
void setup(struct parent *p, struct nar *n, const struct cfg *c, int port, int with_client,
		  struct kids *k, int *bound)
{
	memset(k, 0, sizeof *k);
	k->go_w = k->note_r = -1;
	p->n = n;
	p->c = c;
	p->sfd = -1;
	p->forced = c->stress == 0;
	p->lfd = listen_loopback(port, bound);
	if (p->lfd < 0)
		die("socket/bind/listen on 127.0.0.1:%d", port);
	if (fcntl(p->lfd, F_SETFL, O_NONBLOCK) < 0) /* accept() never blocks the loop */
		die("fcntl(O_NONBLOCK)");
	int sv[2], hold[2] = { -1, -1 }, bell[2], go[2] = { -1, -1 }, note[2] = { -1, -1 };
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	high2(sv);
	if (p->forced) {
		if (pipe2(hold, O_CLOEXEC) < 0)
			die("pipe2");
		high2(hold);
	}
	if (pipe2(bell, O_CLOEXEC | O_NONBLOCK) < 0)
		die("pipe2");
	high2(bell);
	if (with_client) {
		if (pipe2(go, O_CLOEXEC) < 0 || pipe2(note, O_CLOEXEC) < 0)
			die("pipe2");
		high2(go);
		high2(note);
	}
	k->worker = fork();
	if (k->worker < 0)
		die("fork");
	if (k->worker == 0) {
		n->role = "worker";
		close(sv[0]);
		close(p->lfd);
		close(bell[0]);
		close(bell[1]);
		if (hold[1] >= 0)
			close(hold[1]);
		for (int i = 0; i < 2; i++) {
			if (go[i] >= 0)
				close(go[i]);
			if (note[i] >= 0)
				close(note[i]);
		}
		unblock_signals();
		if (checkpoint(c->checkpoint, "worker") < 0) /* the tests: sv[1], hold[0] */
			die("worker: checkpoint");
		int rc = worker(n, c, sv[1], hold[0]);
		close(sv[1]);
		if (hold[0] >= 0)
			close(hold[0]);
		nar_close(n);
		_exit(rc);
	}
	close(sv[1]);
	if (hold[0] >= 0)
		close(hold[0]);
	p->chan = sv[0];
	p->hold_w = hold[1];
	p->bell_r = bell[0];
	p->bell_w = bell[1];
	ev(n, "fork", "worker", "peer_pid=%d", (int)k->worker);
	say(n, "pre-forked worker %d; it can get connections only through our Unix socket",
	    (int)k->worker);
	if (with_client) {
		k->client = fork();
		if (k->client < 0)
			die("fork");
		if (k->client == 0) {
			n->role = "client";
			close(go[1]);
			close(note[0]);
			close(p->lfd);
			close(p->chan);
			close(p->bell_r);
			close(p->bell_w);
			if (p->hold_w >= 0)
				close(p->hold_w);
			if (checkpoint(c->checkpoint, "client") < 0) /* the tests: go[0], note[1] */
				die("client: checkpoint");
			int rc = c->stress ? client_stress(n, *bound, c->stress, note[1])
					   : client_forced(n, *bound, go[0], note[1]);
			close(go[0]);
			close(note[1]);
			nar_close(n);
			_exit(rc);
		}
		close(go[0]);
		close(note[1]);
		k->go_w = go[1];
		k->note_r = note[0];
	}
	if (watch_init(&p->w, c->poller, c->no_fd_clr) < 0)
		die("epoll_create1");
	if (p->w.epfd >= 0)
		p->w.epfd = high(p->w.epfd);
	if (watch_add(&p->w, p->lfd, TAG_LISTEN) < 0 || watch_add(&p->w, p->bell_r, TAG_BELL) < 0)
		die("watch");
	if (!p->forced && watch_add(&p->w, p->chan, TAG_CHAN) < 0)
		die("watch");
}

/* Closes what the parent still holds and reaps the children. */
int teardown(struct parent *p, struct kids *k)
{
	if (p->ndups)
		say(p->n, "closing the %d duplicates I was still holding (the article never closes them)",
		    p->ndups);
	for (int i = 0; i < p->ndups; i++)
		if (owner_of(p, p->dups[i])) { /* not already closed by the loop */
			set_owner(p, p->dups[i], 0);
			close(p->dups[i]);
		}
	p->ndups = 0;
	for (int fd = 0; fd < MAX_FDNUM; fd++)
		if (p->owner[fd]) {
			close(fd);
			p->owner[fd] = 0;
		}
	close(p->chan); /* the worker's recvmsg/hold read sees end-of-file and it exits */
	if (p->hold_w >= 0)
		close(p->hold_w);
	if (k->go_w >= 0)
		close(k->go_w);
	int ok = 1, st;
	if (reap_child(k->worker, WAIT_MS, &st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		ok = 0;
	if (k->client && (reap_child(k->client, WAIT_MS, &st) < 0 || !WIFEXITED(st) ||
			  WEXITSTATUS(st) != 0))
		ok = 0;
	if (k->note_r >= 0)
		close(k->note_r);
	watch_free(&p->w);
	close(p->bell_r);
	close(p->bell_w);
	close(p->lfd);
	return ok;
}

static void read_note(int fd, struct note *nt, int kind)
{
	if (read_exact(fd, nt, sizeof *nt, WAIT_MS * 4) < 0 || nt->kind != kind)
		die("waiting for the client");
}

/* One scenario: forced rounds or --stress, one mode, one poller. */
int scenario(struct nar *n, const struct cfg *c, struct stats *out)
{
	struct parent *p = calloc(1, sizeof *p);
	if (!p)
		die("calloc");
	struct kids k;
	int port;
	say(n, "=== mode %s, poller %s, child-dup %s ===", mode_names[c->mode], poller_names[c->poller],
	    c->child_dup ? "on" : "off");
	ev(n, "scenario", NULL, "mode=%s poller=%s child_dup=%d", mode_names[c->mode],
	   poller_names[c->poller], c->child_dup);
	n->quiet = c->stress > 0; /* a thousand rounds: only the summary */
	setup(p, n, c, 0, 1, &k, &port);
	int before = count_fds();
	long deadline = time(NULL) + 600;
	if (p->forced) {
		for (int i = 1; i <= c->connections; i++) {
			struct note nt;
			ev_harness(n, "go", "client", "conn=%d", i);
			if (write(k.go_w, "g", 1) != 1)
				die("write to client");
			read_note(k.note_r, &nt, NOTE_SENT);
			p->st.sent += nt.a;
			/* The connection is in the accept queue (bounded wait), so the
			 * next iteration is the one that accepts it. */
			if (wait_readable(p->lfd, WAIT_MS) <= 0)
				die("no connection from the client");
			while (!p->handed && !p->dropped) {
				loop_once(p, WAIT_MS, 1);
				if (time(NULL) > deadline)
					die("the loop never accepted the connection");
			}
			if (p->dropped)
				die("the loop closed the connection before handing it off");
			look(p);
			release_worker(p, i);
			wait_report(p);
			read_note(k.note_r, &nt, NOTE_GOT);
			if (nt.a < (long)strlen("connection 1: hello, worker\n"))
				p->st.robbed++;
		}
		/* A last turn of the loop, so a naive parent sees the end-of-file
		 * of the connection it kept. */
		if (write(p->bell_w, "!", 1) != 1)
			die("write doorbell");
		loop_once(p, WAIT_MS, 0);
	} else {
		while (p->reports + p->dropped < c->stress) {
			loop_once(p, WAIT_MS, 1);
			if (time(NULL) > deadline)
				die("stress run did not finish");
		}
		struct note nt;
		read_note(k.note_r, &nt, NOTE_SUMMARY);
		p->st.sent = nt.a;
		p->st.robbed = nt.b;
		if (write(p->bell_w, "!", 1) != 1)
			die("write doorbell");
		loop_once(p, WAIT_MS, 0);
		n->quiet = 0;
		say(n, "%ld connections with natural timing: %ld of them lost bytes (%ld got no reply at all)",
		    c->stress, nt.b, nt.c);
		out_line("stress: mode=%s poller=%s connections=%ld robbed=%ld", mode_names[c->mode],
			 poller_names[c->poller], c->stress, nt.b);
	}
	p->st.growth = count_fds() - before;
	if (p->st.growth)
		say(n, "I hold %ld more descriptors than before the first connection", p->st.growth);
	int ok = teardown(p, &k);
	*out = p->st;
	free(p);
	return ok;
}

