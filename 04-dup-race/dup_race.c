/*
 * dup_race.c - stage 04: who reads a connection while its descriptor is in
 * flight? The article's dup/close steps, the select race, the epoll trap,
 * and the reader's question ("doesn't dup just copy the descriptor?").
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
 * The race is forced, without sleeps: the client's bytes are already queued
 * on the connection when the parent sends the descriptor (checked with
 * poll), the worker is held on a pipe before its recvmsg(), and the parent's
 * loop runs exactly one iteration - its chance to look - before the worker is
 * released. So naive mode loses the bytes in every run. --stress N drops the
 * holding and runs N connections with natural timing instead.
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
 * the sets"), poll(2) (POLLNVAL), epoll(7) (Q&A 6: closing a descriptor
 * removes it from an interest list only when every descriptor referring to
 * the open file description is closed), epoll_ctl(2), dup(2), close(2),
 * unix(7) (SCM_RIGHTS: "equivalent to dup(2)"), recv(2) MSG_DONTWAIT.
 */
#define _GNU_SOURCE
#include "../03-scm-rights/fdpass.h"
#include "../common/cli.h"
#include "../common/narrate.h"
#include "../common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum mode { NAIVE, ARTICLE, FIXED, ALL_MODES };
enum poller { P_SELECT, P_POLL, P_EPOLL };
static const char *const mode_names[] = { "naive", "article", "fixed", NULL };
static const char *const poller_names[] = { "select", "poll", "epoll", NULL };

#define MAX_FDNUM 8192   /* descriptor numbers the parent keeps a record of */
#define MAX_WATCH 1024   /* pollfd entries */
#define MAX_TOLD 65536   /* connection ids whose stale events were narrated */
#define MAX_PENDING 16   /* accepted, not yet handed off (one per iteration) */

/* Tags of the watched descriptors that are not connections (those are >= 1). */
enum { TAG_LISTEN = -1, TAG_BELL = -2, TAG_CHAN = -3, TAG_SIG = -4 };

static const char usage[] =
	"usage: dup_race [--mode naive|article|fixed] [--poller select|poll|epoll] [--child-dup]\n"
	"                [--connections N | --stress N] [--no-fd-clr] [--trace FILE] [--mermaid]\n"
	"       dup_race --serve [--port N] [--mode M] [--poller P] [--child-dup] [--no-fd-clr]\n"
	"Stage 04: the parent's event loop steals the bytes of a connection whose descriptor\n"
	"is in flight to a worker - unless it stops watching it first.\n"
	"  --mode M         naive: send client_fd, keep watching it\n"
	"                   article: dup, send the duplicate, close the original (step 2)\n"
	"                   fixed: stop watching, send, close\n"
	"                   (no --mode: run all three and print a table)\n"
	"  --poller P       the parent's (and the worker's) event loop; default select\n"
	"  --child-dup      the worker dups what it received and closes the original (step 3)\n"
	"  --connections N  forced rounds per mode, 1..64 (default 2)\n"
	"  --stress N       N connections with natural timing, nobody held (1..5000)\n"
	"  --no-fd-clr      break it (select/poll): closing a number does not drop it from\n"
	"                   the set: EBADF from select, POLLNVAL from poll\n" COMMON_USAGE;

struct cfg {
	enum mode mode;
	enum poller poller;
	int child_dup;
	int connections;
	long stress;     /* 0 = forced rounds */
	int no_fd_clr;
};

struct stats {
	long connections, sent, delivered, stolen, stale, misdirected, growth;
	long robbed;     /* connections whose client was told fewer bytes than it sent */
};

/* ------------------------------------------------------------------ */
/* The parent's watch set, three ways. Every watched number carries a tag:
 * the id of the connection it was watched for (>= 1), or TAG_* above. The
 * tag is this program's bookkeeping only - it lets us tell you afterwards
 * which connection an event was *really* about. The loop itself, like the
 * article's, acts on the descriptor number the poller reports. */

struct hit {
	int fd, tag, nval;
};

struct watchset {
	enum poller kind;
	int no_fd_clr;
	fd_set set;              /* select: the master set */
	int tag[FD_SETSIZE];
	struct pollfd pfd[MAX_WATCH]; /* poll: the array */
	int ptag[MAX_WATCH];
	int npfd;
	int epfd;                /* epoll: the kernel keeps the set */
};

static int watch_init(struct watchset *w, enum poller kind, int no_fd_clr)
{
	memset(w, 0, sizeof *w);
	w->kind = kind;
	w->no_fd_clr = no_fd_clr;
	w->epfd = -1;
	FD_ZERO(&w->set);
	if (kind == P_EPOLL && (w->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
		return -1;
	return 0;
}

static int watch_add(struct watchset *w, int fd, int tag)
{
	switch (w->kind) {
	case P_SELECT:
		if (fd >= FD_SETSIZE) {
			errno = EMFILE;
			return -1;
		}
		FD_SET(fd, &w->set);
		w->tag[fd] = tag;
		return 0;
	case P_POLL:
		if (w->npfd == MAX_WATCH) {
			errno = EMFILE;
			return -1;
		}
		w->pfd[w->npfd] = (struct pollfd){ .fd = fd, .events = POLLIN };
		w->ptag[w->npfd++] = tag;
		return 0;
	case P_EPOLL: {
		/* The event carries the number (what the loop uses) and the tag. */
		struct epoll_event e = { .events = EPOLLIN,
					 .data.u64 = ((uint64_t)(uint32_t)tag << 32) | (uint32_t)fd };
		return epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &e);
	}
	}
	return -1;
}

/* Stop watching a number: FD_CLR, drop the pollfd(s), EPOLL_CTL_DEL. */
static int watch_del(struct watchset *w, int fd)
{
	switch (w->kind) {
	case P_SELECT:
		if (fd < FD_SETSIZE)
			FD_CLR(fd, &w->set);
		return 0;
	case P_POLL:
		for (int i = 0; i < w->npfd;)
			if (w->pfd[i].fd == fd) {
				w->pfd[i] = w->pfd[--w->npfd];
				w->ptag[i] = w->ptag[w->npfd];
			} else {
				i++;
			}
		return 0;
	case P_EPOLL:
		return epoll_ctl(w->epfd, EPOLL_CTL_DEL, fd, NULL);
	}
	return -1;
}

/*
 * What a loop of each kind usually does when it closes a connection: a
 * select loop FD_CLRs the number, a poll loop drops its pollfd (both would
 * otherwise hand a closed number to the kernel on the next call); an epoll
 * loop just closes, trusting that close() takes the descriptor out of the
 * interest list. That trust is the epoll trap this stage shows.
 */
static void close_watched(struct watchset *w, int fd)
{
	if (w->kind != P_EPOLL && !w->no_fd_clr)
		watch_del(w, fd);
	close(fd);
}

/* One wait. Returns the number of hits, or -1/errno (select: EBADF when the
 * set names a closed number). timeout_ms -1 = no bound (--serve only). */
static int watch_wait(struct watchset *w, int timeout_ms, struct hit *out, int cap)
{
	int n = 0;
	switch (w->kind) {
	case P_SELECT: {
		fd_set r = w->set;
		int maxfd = -1;
		for (int fd = 0; fd < FD_SETSIZE; fd++)
			if (FD_ISSET(fd, &w->set))
				maxfd = fd;
		struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
		int r2 = select(maxfd + 1, &r, NULL, NULL, timeout_ms < 0 ? NULL : &tv);
		if (r2 < 0)
			return -1;
		for (int fd = 0; fd <= maxfd && n < cap; fd++)
			if (FD_ISSET(fd, &r))
				out[n++] = (struct hit){ fd, w->tag[fd], 0 };
		return n;
	}
	case P_POLL: {
		int r2 = poll(w->pfd, (nfds_t)w->npfd, timeout_ms);
		if (r2 < 0)
			return -1;
		for (int i = 0; i < w->npfd && n < cap; i++)
			if (w->pfd[i].revents)
				out[n++] = (struct hit){ w->pfd[i].fd, w->ptag[i],
							 !!(w->pfd[i].revents & POLLNVAL) };
		return n;
	}
	case P_EPOLL: {
		struct epoll_event evs[64];
		int r2 = epoll_wait(w->epfd, evs, cap < 64 ? cap : 64, timeout_ms);
		if (r2 < 0)
			return -1;
		for (int i = 0; i < r2; i++)
			out[n++] = (struct hit){ (int)(uint32_t)evs[i].data.u64,
						 (int)(uint32_t)(evs[i].data.u64 >> 32), 0 };
		return n;
	}
	}
	return -1;
}

/* The socket's inode: which connection a descriptor really is. */
static unsigned long inode_of(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

/* ------------------------------------------------------------------ */
/* Messages between the processes: fixed-size structs, so that a stream
 * socket or pipe hands each one over whole with a bounded read. */

struct report { /* worker -> parent, after each connection */
	int32_t conn;
	int32_t bytes;
};

struct note { /* client -> parent */
	int32_t kind; /* NOTE_SENT, NOTE_GOT, NOTE_SUMMARY */
	int32_t conn;
	int64_t a, b, c; /* SENT: a = bytes sent. GOT: a = bytes the worker said it got
			  * (-1: no reply). SUMMARY: a = bytes sent, b = connections
			  * robbed, c = of those, without any reply. */
};
enum { NOTE_SENT = 1, NOTE_GOT, NOTE_SUMMARY };

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

/* ------------------------------------------------------------------ */
/* The worker: pre-forked, so it can only get connections by SCM_RIGHTS. */

/* Waits (bounded) until fd is readable, with the worker's own poller. */
static int worker_wait(enum poller kind, int ep, int fd, int timeout_ms)
{
	int r;
	do {
		if (kind == P_SELECT && fd < FD_SETSIZE) {
			fd_set s;
			FD_ZERO(&s);
			FD_SET(fd, &s);
			struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
			r = select(fd + 1, &s, NULL, NULL, &tv);
		} else if (kind == P_EPOLL) {
			struct epoll_event e;
			r = epoll_wait(ep, &e, 1, timeout_ms);
		} else {
			r = wait_readable(fd, timeout_ms);
		}
	} while (r < 0 && errno == EINTR);
	return r;
}

/* Reads the connection until the client's end-of-file; returns the bytes. */
static long worker_read_all(enum poller kind, int fd, int *timed_out)
{
	long total = 0;
	char buf[4096];
	int ep = -1;
	*timed_out = 0;
	if (kind == P_EPOLL) {
		/* epoll_ctl(ADD) checks readiness right away: bytes that arrived
		 * while the descriptor was in flight are reported like any other. */
		struct epoll_event e = { .events = EPOLLIN, .data.fd = fd };
		ep = epoll_create1(EPOLL_CLOEXEC);
		if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0)
			die("worker: epoll_create1/epoll_ctl");
	}
	for (;;) {
		int r = worker_wait(kind, ep, fd, WAIT_MS);
		if (r <= 0) {
			*timed_out = (r == 0);
			break;
		}
		ssize_t k = read(fd, buf, sizeof buf);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		total += k;
	}
	if (ep >= 0)
		close(ep);
	return total;
}

static int worker(struct nar *n, const struct cfg *c, int chan, int hold_r)
{
	for (;;) {
		/* Forced rounds: held here, before recvmsg, until the parent has looked. */
		if (hold_r >= 0) {
			char go;
			ssize_t r = read_within(hold_r, &go, 1, WAIT_MS * 6);
			if (r == 0)
				return 0; /* the parent is done with us */
			if (r < 0)
				die("worker: waiting to be released");
		}
		if (wait_readable(chan, WAIT_MS * 6) <= 0)
			die("worker: no message from the parent");
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
			say(n, "--child-dup: dup(%d) -> %d, close(%d) (the article's step 3)", fd, d, fd);
			fd = d;
		}
		int timed_out;
		long got = worker_read_all(c->poller, fd, &timed_out);
		if (timed_out)
			say(n, "no end-of-file from the client within %d ms; answering anyway", WAIT_MS);
		ev(n, "read", NULL, "conn=%d bytes=%ld", (int)conn, got);
		say(n, "%s says fd %d is readable; read %ld bytes, then end-of-file", poller_names[c->poller],
		    fd, got);
		char reply[96];
		int len = snprintf(reply, sizeof reply, "worker %d got %ld bytes\n", (int)getpid(), got);
		struct report rep = { conn, (int32_t)got };
		/* Events first: nobody can act on them before they are recorded. */
		ev(n, "reply", "client", "conn=%d got=%ld", (int)conn, got);
		ev(n, "done", "parent", "conn=%d bytes=%ld", (int)conn, got);
		write_all(fd, reply, (size_t)len); /* a client that left: EPIPE, ignored */
		close(fd);
		if (write_all(chan, &rep, sizeof rep) < 0)
			die("worker: report to parent");
	}
}

/* ------------------------------------------------------------------ */
/* The built-in client: a process of its own, as a real client would be. */

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

/* ------------------------------------------------------------------ */
/* The parent: the dispatcher. */

struct parent {
	struct nar *n;
	const struct cfg *c;
	struct watchset w;
	int lfd, chan, hold_w, bell_r, bell_w, sfd;
	int forced;
	int owner[MAX_FDNUM];         /* connection id behind each of my numbers, 0 = none */
	int pend_fd[MAX_PENDING], pend_id[MAX_PENDING], npend;
	int dups[MAX_FDNUM], ndups;   /* article mode: duplicates I still hold */
	int next_id;
	unsigned char told[MAX_TOLD]; /* stale events narrated once per connection */
	struct stats st;
	int reports;                  /* --stress: reports received */
	char rbuf[sizeof(struct report) * 64];
	size_t rlen;
	int handed;                   /* handed off in the last iteration */
	int dropped;                  /* closed by the loop itself before the hand-off */
	int conn_events;              /* connection events in the last iteration */
	int stop;                     /* --serve: SIGTERM/SIGINT */
};

static void set_owner(struct parent *p, int fd, int id)
{
	if (fd >= 0 && fd < MAX_FDNUM)
		p->owner[fd] = id;
}

static int owner_of(const struct parent *p, int fd)
{
	return fd >= 0 && fd < MAX_FDNUM ? p->owner[fd] : 0;
}

static int first_time(struct parent *p, int id)
{
	unsigned i = (unsigned)id % MAX_TOLD;
	if (p->told[i])
		return 0;
	p->told[i] = 1;
	return 1;
}

/* Accepts one connection and watches it (every connection is watched: that
 * is how the article's loop serves clients). Handed off at the end of the
 * iteration. */
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
	if (p->forced) {
		/* Forcing the race: the client writes right after connecting; wait
		 * (bounded) until its bytes sit in this socket's receive queue, so
		 * they are there for the whole time the descriptor is in flight. */
		int r = wait_readable(c, WAIT_MS);
		int q = 0;
		if (r > 0 && ioctl(c, FIONREAD, &q) == 0 && q > 0) {
			say(p->n, "(forcing the race) the client's %d bytes are already queued on fd %d", q, c);
			ev(p->n, "queued", NULL, "fd=%d bytes=%d", c, q);
		} else {
			say(p->n, "(forcing the race) no bytes from the client within %d ms", WAIT_MS);
		}
	}
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

static void send_to_worker(struct parent *p, int fd, int id)
{
	int32_t conn = id;
	ev(p->n, "sendmsg", "worker", "conn=%d fd=%d", id, fd);
	int st = fdpass_send(p->chan, &conn, sizeof conn, &fd, 1, NULL);
	if (st != FDPASS_OK)
		die("sendmsg to the worker: %s", fdpass_strerror(st));
}

/* The three ways of handing a connection off: the lesson of the stage. */
static void hand_off(struct parent *p, int c, int id)
{
	if (owner_of(p, c) != id) {
		say(p->n, "connection #%d was closed by my own loop before I could hand it off: its "
			  "client gets no reply", id);
		ev(p->n, "lost", NULL, "conn=%d", id);
		p->dropped++;
		return;
	}
	switch (p->c->mode) {
	case NAIVE:
		send_to_worker(p, c, id);
		say(p->n, "sendmsg(fd %d) to the worker; fd %d stays open and in my %s set", c, c,
		    poller_names[p->c->poller]);
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
		close_watched(&p->w, c);
		set_owner(p, c, 0);
		ev(p->n, "close", NULL, "fd=%d", c);
		say(p->n, "article: dup(%d) -> %d, sendmsg(fd %d), close(%d); fd %d stays open here", c, d,
		    d, c, d);
		break;
	}
	case FIXED:
		watch_del(&p->w, c);
		ev(p->n, "unwatch", NULL, "fd=%d", c);
		send_to_worker(p, c, id);
		close(c);
		set_owner(p, c, 0);
		ev(p->n, "close", NULL, "fd=%d", c);
		say(p->n, "fixed: stopped watching fd %d (%s), sendmsg(fd %d), close(%d)", c,
		    p->c->poller == P_SELECT ? "FD_CLR" : p->c->poller == P_POLL ? "pollfd removed"
										  : "EPOLL_CTL_DEL",
		    c, c);
		break;
	default:
		break;
	}
	p->handed++;
}

/* The loop found a connection number readable. In a dispatcher every
 * connection has been handed off by now, so whatever it reads is stolen. */
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
	/* The loop does what the article's loop does with a readable number:
	 * it reads it (MSG_DONTWAIT: never block the loop on a wrong guess). */
	char buf[4096];
	ssize_t r;
	do
		r = recv(h->fd, buf, sizeof buf, MSG_DONTWAIT);
	while (r < 0 && errno == EINTR);
	int err = errno;
	if (stale && now == 0) {
		if (first_time(p, h->tag)) {
			say(p->n, "%s reports fd %d (connection #%d), but I closed fd %d: read -> %s. "
				  "The registration outlived the number", poller, h->fd, h->tag, h->fd,
			    r < 0 ? strerror(err) : "data");
			ev(p->n, "stale", NULL, "fd=%d conn=%d what=%s", h->fd, h->tag,
			   r < 0 && err == EBADF ? "EBADF" : "read");
		}
	} else if (stale) {
		ev(p->n, "misdirected", NULL, "fd=%d event_conn=%d now_conn=%d bytes=%zd inode=%lu", h->fd,
		   h->tag, now, r > 0 ? r : 0, inode_of(h->fd));
		say(p->n, "%s reports fd %d for connection #%d, but fd %d is connection #%d now: "
			  "I read %zd bytes of the WRONG connection", poller, h->fd, h->tag, h->fd, now,
		    r > 0 ? r : 0);
	}
	if (r > 0) {
		p->st.stolen += r;
		if (!stale) {
			say(p->n, "%s says fd %d is readable: read %zd bytes meant for the worker - "
				  "STOLEN, the worker will never see them", poller, h->fd, r);
			ev(p->n, "steal", NULL, "fd=%d conn=%d bytes=%zd", h->fd, now, r);
		}
	} else if (r == 0 && now != 0) {
		say(p->n, "fd %d: end-of-file; closing my copy", h->fd);
		ev(p->n, "eof", NULL, "fd=%d conn=%d", h->fd, now);
		close_watched(&p->w, h->fd);
		set_owner(p, h->fd, 0);
	}
}

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

/* One iteration of the event loop. accept_ok = 0: leave the listener alone
 * (the forced look must not start a new round). Returns the number of
 * events, 0 on a timeout or a failed wait. */
static int loop_once(struct parent *p, int timeout_ms, int accept_ok)
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
		for (int fd = 0; fd < FD_SETSIZE; fd++)
			if (FD_ISSET(fd, &p->w.set) && fcntl(fd, F_GETFD) < 0)
				FD_CLR(fd, &p->w.set);
		return 0;
	}
	/* Accept first, then the connections, then the hand-offs: so an event
	 * for a stale number meets the connection that just took it over. */
	for (int i = 0; i < n; i++) {
		if (hits[i].tag == TAG_LISTEN && accept_ok)
			on_accept(p);
		else if (hits[i].tag == TAG_BELL) {
			char b[16];
			while (read(p->bell_r, b, sizeof b) > 0)
				;
		} else if (hits[i].tag == TAG_CHAN)
			read_reports(p);
		else if (hits[i].tag == TAG_SIG) {
			struct signalfd_siginfo si;
			while (read(p->sfd, &si, sizeof si) == sizeof si)
				p->stop = 1;
		}
	}
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

/* The forced look: ring my own doorbell (a pipe in the watch set), so the
 * iteration returns at once with everything that is ready right now. */
static void look(struct parent *p)
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

static void release_worker(struct parent *p, int id)
{
	ev(p->n, "release", "worker", "conn=%d", id);
	if (write(p->hold_w, "g", 1) != 1)
		die("write to the worker's hold pipe");
}

static void wait_report(struct parent *p)
{
	struct report rep;
	if (read_exact(p->chan, &rep, sizeof rep, WAIT_MS * 4) < 0)
		die("waiting for the worker's report");
	p->st.delivered += rep.bytes;
}

static int count_fds(void)
{
	int fds[16];
	return fd_list(fds, 16);
}

/* ------------------------------------------------------------------ */

struct kids {
	pid_t worker, client;
	int go_w, note_r;
};

/*
 * Moves a descriptor of the machinery (channel, pipes, epoll instance) up
 * to 50 or above, so that the numbers the lesson talks about - the listener,
 * the connections, the duplicates - are the low ones, the same in every run.
 */
static int high(int fd)
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
static void setup(struct parent *p, struct nar *n, const struct cfg *c, int port, int with_client,
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
static int teardown(struct parent *p, struct kids *k)
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
	if (p->w.epfd >= 0)
		close(p->w.epfd);
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
static int scenario(struct nar *n, const struct cfg *c, struct stats *out)
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
			ev(n, "go", "client", "conn=%d", i);
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

/* --serve: the same dispatcher for external clients, one forced round per
 * connection: accept, wait for the client's bytes, hand off, look, release. */
static int serve(struct nar *n, const struct cfg *c, int port, struct stats *out)
{
	struct parent *p = calloc(1, sizeof *p);
	if (!p)
		die("calloc");
	struct kids k;
	int sfd = signal_fd(0);
	if (sfd < 0)
		die("signalfd");
	sfd = high(sfd);
	n->quiet = 1; /* the first line must be "listening on" */
	setup(p, n, c, port, 0, &k, &port);
	p->sfd = sfd;
	if (watch_add(&p->w, sfd, TAG_SIG) < 0)
		die("watch");
	int before = count_fds();
	announce_listening(port);
	n->quiet = 0;
	say(n, "mode %s, poller %s, child-dup %s; pre-forked worker %d", mode_names[c->mode],
	    poller_names[c->poller], c->child_dup ? "on" : "off", (int)k.worker);
	while (!p->stop) {
		loop_once(p, -1, 1); /* a server waits for clients as long as it runs */
		if (!p->handed)
			continue;
		look(p);
		release_worker(p, p->next_id);
		wait_report(p);
	}
	say(n, "shutting down");
	if (write(p->bell_w, "!", 1) == 1)
		loop_once(p, 0, 0);
	p->st.growth = count_fds() - before;
	/* What the clients sent, as far as the server can know: every byte
	 * anyone on this side read from the connections. */
	p->st.sent = p->st.delivered + p->st.stolen;
	int ok = teardown(p, &k);
	close(sfd);
	*out = p->st;
	free(p);
	return ok;
}

static void result_line(const char *mode, const struct cfg *c, const struct stats *s)
{
	out_line("result: mode=%s poller=%s child_dup=%d connections=%ld sent=%ld delivered=%ld "
		 "stolen=%ld stale_events=%ld misdirected=%ld parent_fd_growth=%ld",
		 mode, poller_names[c->poller], c->child_dup, s->connections, s->sent, s->delivered,
		 s->stolen, s->stale, s->misdirected, s->growth);
}

/* Did this mode teach what it should? (forced rounds; --stress only checks fixed) */
static int lesson_ok(const struct cfg *c, const struct stats *s)
{
	int clean = s->stolen == 0 && s->stale == 0 && s->misdirected == 0 && s->growth == 0 &&
		    s->delivered == s->sent;
	if (c->mode == FIXED)
		return clean;
	if (c->stress)
		return 1;
	if (c->mode == NAIVE)
		return s->stolen > 0;
	if (c->no_fd_clr)
		return s->stale > 0 && s->stolen == 0;
	if (c->poller == P_EPOLL)
		return s->stale > 0;
	return s->stolen == 0 && s->growth == s->connections;
}

int main(int argc, char **argv)
{
	enum { OPT_MODE = OPT_STAGE, OPT_POLLER, OPT_CHILD_DUP, OPT_CONNS, OPT_STRESS, OPT_NO_FD_CLR };
	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "mode", required_argument, NULL, OPT_MODE },
		{ "poller", required_argument, NULL, OPT_POLLER },
		{ "child-dup", no_argument, NULL, OPT_CHILD_DUP },
		{ "connections", required_argument, NULL, OPT_CONNS },
		{ "stress", required_argument, NULL, OPT_STRESS },
		{ "no-fd-clr", no_argument, NULL, OPT_NO_FD_CLR },
		{ 0 },
	};
	struct common_opts o = { 0 };
	struct cfg c = { .mode = ALL_MODES, .poller = P_SELECT, .connections = 2 };
	int conns_given = 0, ch;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&o, ch, optarg, usage))
			continue;
		switch (ch) {
		case OPT_MODE: c.mode = parse_choice("--mode", optarg, mode_names); break;
		case OPT_POLLER: c.poller = parse_choice("--poller", optarg, poller_names); break;
		case OPT_CHILD_DUP: c.child_dup = 1; break;
		case OPT_CONNS:
			c.connections = (int)parse_long("--connections", optarg, 1, 64);
			conns_given = 1;
			break;
		case OPT_STRESS: c.stress = parse_long("--stress", optarg, 1, 5000); break;
		case OPT_NO_FD_CLR: c.no_fd_clr = 1; break;
		}
	}
	common_done(&o, argc, argv, usage);
	if (c.stress && (o.serve || conns_given))
		usage_error("--stress runs its own clients; it goes with neither --serve nor --connections");
	if (c.stress && o.mermaid)
		usage_error("--mermaid draws forced rounds; it does not go with --stress");
	if (c.no_fd_clr && c.poller == P_EPOLL)
		usage_error("--no-fd-clr is for select and poll; under epoll, --mode article already "
			    "closes without EPOLL_CTL_DEL");
	signal(SIGPIPE, SIG_IGN); /* a client that left is an EPIPE, handled where it happens */
	if (c.stress) {
		/* --mode article keeps a duplicate per connection: let it grow
		 * past the default soft limit rather than fail on EMFILE. */
		struct rlimit rl;
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max &&
		    rl.rlim_cur < (rlim_t)c.stress + 64) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}

	struct nar n;
	if (nar_open(&n, "parent", o.trace, o.mermaid) < 0)
		die("open trace file");
	int ok = 1;
	struct stats s = { 0 };
	if (o.serve) {
		if (c.mode == ALL_MODES)
			c.mode = NAIVE;
		ok = serve(&n, &c, o.port, &s);
		nar_close(&n);
		result_line(mode_names[c.mode], &c, &s);
		return ok ? EXIT_LESSON : EXIT_RUNTIME;
	}
	if (c.mode != ALL_MODES) {
		ok = scenario(&n, &c, &s) && lesson_ok(&c, &s);
		if (o.mermaid)
			nar_mermaid(&n, stdout);
		fflush(stdout); /* stdio buffer: out before the result line (write(2)) */
		nar_close(&n);
		result_line(mode_names[c.mode], &c, &s);
		return ok ? EXIT_LESSON : EXIT_RUNTIME;
	}
	/* No --mode: the three of them, one after the other, and a table. */
	struct stats each[3];
	for (int m = NAIVE; m <= FIXED; m++) {
		struct cfg one = c;
		one.mode = (enum mode)m;
		if (!scenario(&n, &one, &each[m]) || !lesson_ok(&one, &each[m]))
			ok = 0;
		s.connections += each[m].connections;
		s.sent += each[m].sent;
		s.delivered += each[m].delivered;
		s.stolen += each[m].stolen;
		s.stale += each[m].stale;
		s.misdirected += each[m].misdirected;
		s.growth += each[m].growth;
	}
	out_line("%-8s %-7s %5s %9s %6s %12s %11s %16s", "mode", "poller", "sent", "delivered",
		 "stolen", "stale_events", "misdirected", "parent_fd_growth");
	for (int m = NAIVE; m <= FIXED; m++)
		out_line("%-8s %-7s %5ld %9ld %6ld %12ld %11ld %16ld", mode_names[m],
			 poller_names[c.poller], each[m].sent, each[m].delivered, each[m].stolen,
			 each[m].stale, each[m].misdirected, each[m].growth);
	if (o.mermaid)
		nar_mermaid(&n, stdout);
	fflush(stdout); /* stdio buffer: out before the result line (write(2)) */
	nar_close(&n);
	result_line("all", &c, &s);
	return ok ? EXIT_LESSON : EXIT_RUNTIME;
}
