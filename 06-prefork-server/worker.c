/*
 * worker.c - stage 06: a worker's life. One epoll loop serves many
 * connections at once, with the same HTTP responder in every model: it reads
 * requests (pipelined or not), answers them, bounds a slow client with a
 * deadline, and with --tls carries on the session the dispatcher handed over:
 * on stage 05's record layer, or with --ktls installed in the kernel, which
 * then seals on send(2) and opens on recvmsg(2). handoff_server.c's
 * worker_chan() feeds it the descriptors it receives.
 *
 * Run it: as part of ./handoff_server --serve (see handoff_server.c).
 * See also: epoll(7) (level-triggered EPOLLIN/EPOLLOUT), shutdown(2),
 * RFC 9112 (persistent connections, pipelining), RFC 8446 section 6 (alerts),
 * ../05-ssl/tls_export.h, ../05-ssl/ktls.h, the kernel's
 * Documentation/networking/tls.rst.
 */
#define _GNU_SOURCE
#include "../03-scm-rights/fdpass.h"
#include "../05-ssl/ktls.h"
#include "../05-ssl/tls_export.h"
#include "../common/util.h"
#include "http.h"
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define OUT_MAX 2048 /* a connection's pending response bytes */
/* One connection's share of a turn of the event loop: at most this many
 * read-respond-write rounds, and this many raw bytes read. A client that
 * pipelines without end, or floods records that carry no data, waits for
 * the next turn like everyone else instead of starving them. */
#define TURN_ROUNDS 4
#define TURN_BYTES (64 * 1024)
/* --tls: the sealed form of a full response buffer */
#define TOUT_MAX (OUT_MAX + 4 * (REC_HEADER + 1 + REC_TAG + 8))

struct conn {
	int fd;
	int closing;         /* close once the pending response is out */
	int peer_eof;        /* the client shut down its side */
	int linger;          /* after an error answer: shut down our side, discard the rest */
	int lingering;       /* ... and now waiting for the client's EOF (bounded) */
	long long deadline;  /* the request head must be in by then */
	size_t turn_left;    /* raw bytes it may still read in this turn */
	size_t in_len, out_len, out_off;
	/* --tls: the session taken over from the dispatcher. `in` and `out` hold
	 * plaintext; `tout` the sealed records on their way to the socket. */
	struct tlsx_sess *tls;
	int ktls;            /* --ktls: the session is in the kernel (tls is NULL) */
	uint32_t mask;       /* the events registered for it in epoll */
	int bye;             /* the alert to send at close (close_notify), -1: none */
	size_t tout_len, tout_off;
	/* The buffers last: a new connection zeroes only what is above them
	 * (conn_add), not its 20-odd KiB of buffers, which are always read
	 * through the lengths above. */
	char in[HTTP_REQ_MAX];
	char out[OUT_MAX];
	uint8_t tout[TOUT_MAX];
};


/* Sends c->bye, the alert that ends the session (close_notify, or the
 * fatal alert an error chose), if there is one and the socket takes it.
 * Returns the alert sent, or -1. */
static int tls_goodbye(struct conn *c)
{
	uint8_t rec[64];
	size_t len;
	int bye = c->bye;
	c->bye = -1;
	if (c->ktls) /* the kernel seals it, after whatever it already took whole */
		return bye >= 0 && ktls_send_alert(c->fd, bye == ALERT_CLOSE_NOTIFY ? 1 : 2, bye) == 0
		       ? bye : -1;
	/* Never into the middle of a record: the rest of a half-sent one goes
	 * first, and if the socket will not take it now, no alert at all (RFC
	 * 8446 section 5: records are not interleaved within one another). */
	while (c->tls && c->tout_off < c->tout_len) {
		ssize_t r = send(c->fd, c->tout + c->tout_off, c->tout_len - c->tout_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r <= 0 && !(r < 0 && errno == EINTR))
			break;
		if (r > 0)
			c->tout_off += (size_t)r;
	}
	if (c->tls && bye >= 0 && c->tout_off >= c->tout_len &&
	    tlsx_seal_alert(c->tls, bye, rec, sizeof rec, &len) == 0 &&
	    send(c->fd, rec, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len)
		return bye;
	return -1;
}

static void conn_close(struct worker *w, struct conn *c)
{
	/* EPOLL_CTL_DEL before close(): while the dispatcher still holds its copy,
	 * the open file lives on, and so would its registration in our epoll set
	 * (stage 04's epoll trap; epoll(7), Q6) - events for a number we no longer own. */
	epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
	int bye = c->tls || c->ktls ? tls_goodbye(c) : -1;
	if (bye >= 0)
		ev(w->n, "goodbye", "client", "alert=%s", rec_alert_name(bye));
	if (c->tls) {
		tlsx_sess_free(c->tls); /* keys and secrets wiped */
		free(c->tls);
	}
	close(c->fd);
	w->tab[c->fd] = NULL;
	free(c);
	w->open--;
	w->done++;
}

/*
 * --ktls: moves c's session into the kernel (ktls.h): TLS_TX and TLS_RX
 * from the state the dispatcher exported, at the next record of each
 * direction. Nothing of the session is buffered here yet (the dispatcher
 * never reads application data, and OpenSSL read no byte past the client's
 * Finished), so the kernel starts exactly where the socket stands. A
 * worker that died before its ack may have begun this on the same socket:
 * ktls_install then checks what it left (KTLS_ADOPTED). 0: in the kernel
 * (c->tls freed, its keys wiped), or TCP_ULP refused with the socket
 * untouched (c keeps the record layer); -1: half installed, close.
 * TCP_ULP attaches to an established connection only: a client that has
 * already sent its FIN (CLOSE_WAIT) gets ENOTCONN, and the record layer
 * serves what it sent before it.
 * Test-only: HANDOFF_SERVER_KTLS_REFUSE_RX=1 makes TLS_RX refused.
 */
static int conn_to_kernel(struct worker *w, struct conn *c)
{
	static int told; /* a refused ULP is said once per worker, not per connection */
	unsigned flags = getenv("HANDOFF_SERVER_KTLS_REFUSE_RX") ? KTLS_TEST_REFUSE_RX : 0;
	int s = ktls_install(c->fd, &c->tls->rd, &c->tls->wr, flags);
	int e = errno;
	if (s == KTLS_OK || s == KTLS_ADOPTED)
		ev(w->n, "ktls", NULL, "installed=1 adopted=%d", s == KTLS_ADOPTED);
	else
		ev(w->n, "ktls", NULL, "installed=0 errno=%s", strerrorname_np(e));
	if (s == KTLS_NO_ULP && e == ENOTCONN) {
		if (w->cfg->verbose)
			say(w->n, "fd %d: the client has closed its side already (setsockopt TCP_ULP: "
				  "ENOTCONN): my own record layer serves what it sent", c->fd);
		return 0;
	}
	if (s == KTLS_NO_ULP) {
		if (!told++)
			say(w->n, "kernel TLS refused (setsockopt TCP_ULP: %s): the socket is untouched, "
				  "using my own record layer", strerrorname_np(e));
		return 0;
	}
	if (s == KTLS_BROKEN) {
		/* No fallback: the kernel may already seal what is written. */
		say(w->n, "fd %d: kernel TLS half installed (%s (%s)): closing the connection, "
			  "never my own records on it", c->fd, strerrorname_np(e), strerror(e));
		return -1;
	}
	if (s == KTLS_ADOPTED)
		say(w->n, "fd %d: kernel TLS was already on this socket, exactly this session (a worker "
			  "that died before its ack put it there): taking it as it is", c->fd);
	else if (w->cfg->verbose)
		say(w->n, "fd %d: kernel TLS installed: plain send and recvmsg from here", c->fd);
	tlsx_sess_free(c->tls);
	free(c->tls);
	c->tls = NULL;
	c->ktls = 1;
	return 0;
}

/* Takes fd over: it becomes one of this worker's connections, or is closed.
 * With a session state (--tls; the len bytes at state, wiped here), it
 * carries the session on with stage 05's record layer, or in the kernel
 * (--ktls). 0: added; -1: out of room, or kTLS half installed: closed; -2:
 * a state that does not decode (fail closed: the connection is
 * acknowledged, so never sent again, and closed, as no one can speak its
 * session). */
int conn_add(struct worker *w, int fd, const uint8_t *state, size_t len)
{
	static struct handoff_state hs; /* large: not on the stack */
	struct handoff_state *st = NULL;
	if (state) {
		if (hs_decode(&hs, state, len) < 0) {
			hs_wipe(&hs);
			close(fd);
			return -2;
		}
		st = &hs;
	}
	struct conn *c = fd < w->tabcap ? malloc(sizeof *c) : NULL;
	if (c)
		memset(c, 0, offsetof(struct conn, in));
	struct tlsx_sess *tls = st ? malloc(sizeof *tls) : NULL;
	if (!c || (st && (!tls || tlsx_sess_init(tls, st, 0) < 0))) {
		if (st)
			hs_wipe(st);
		free(tls);
		free(c);
		close(fd);
		return -1;
	}
	c->fd = fd;
	c->tls = tls;
	c->bye = ALERT_CLOSE_NOTIFY;
	c->mask = EPOLLIN;
	c->deadline = now_ms() + w->cfg->header_ms;
	/* The descriptor is non-blocking already: O_NONBLOCK lives in the open
	 * file description, which the dispatcher's accept4(SOCK_NONBLOCK) set. */
	if ((tls && w->cfg->ktls_on && conn_to_kernel(w, c) < 0) ||
	    ep_add(w->ep, fd, EPOLLIN, tag(T_CONN, (uint32_t)fd)) < 0) {
		if (c->tls) {
			tlsx_sess_free(c->tls);
			free(c->tls);
		}
		close(fd);
		free(c);
		return -1;
	}
	w->tab[fd] = c;
	w->open++;
	return 0;
}

/* Appends the responses to every complete request buffered (pipelining),
 * as many as the output buffer takes. 1: it stopped for room with requests
 * still buffered (call it again once the output is out); 0: nothing left. */
static int conn_respond(struct worker *w, struct conn *c)
{
	while (!c->closing && OUT_MAX - c->out_len >= 512) {
		size_t used, plen;
		int ka;
		const char *path; /* the request's path, inside c->in */
		int r = http_parse(c->in, c->in_len, &used, &ka, &path, &plen);
		if (r == HTTP_MORE) {
			if (c->peer_eof)
				c->closing = 1; /* half a request, and no more coming */
			return 0;
		}
		if (r == HTTP_BAD) {
			c->out_len += http_error(c->out + c->out_len, OUT_MAX - c->out_len, 400);
			c->closing = c->linger = 1;
			c->in_len = 0;
			if (w->cfg->verbose)
				say(w->n, "fd %d: malformed or oversized request -> 400, closing", c->fd);
			return 0;
		}
		if (w->draining)
			ka = 0; /* shutting down: this is the connection's last answer */
		if (w->cfg->verbose) {
			say(w->n, "fd %d: GET %.*s -> 200 (%s)", c->fd, (int)plen, path,
			    ka ? "keep-alive: the connection stays with me" : "Connection: close");
			ev(w->n, "respond", "client", "status=200 keep_alive=%d", ka);
		}
		c->out_len += http_ok(c->out + c->out_len, OUT_MAX - c->out_len, (int)w->pid, ka);
		memmove(c->in, c->in + used, c->in_len - used);
		c->in_len -= used;
		c->deadline = now_ms() + w->cfg->header_ms; /* the next request's clock */
		if (!ka)
			c->closing = 1;
	}
	return !c->closing && c->in_len > 0;
}

/*
 * conn_recv for a session in the kernel: application data comes as bytes
 * (the kernel has opened the records); the first record of another type
 * arrives alone, with its type in a control message, and ends the client's
 * data (close_notify: 0) or the connection (EPROTO, c->bye the alert to
 * answer with, or -1). want: at most this many bytes (> 0) into buf.
 */
static ssize_t conn_recv_kernel(struct conn *c, char *buf, size_t want)
{
	/* Room to judge any record that is not data: an alert is 2 bytes, a
	 * KeyUpdate 5; a longer one is malformed whatever follows. */
	unsigned char ctl[8];
	int type = CT_APPLICATION_DATA, alert, requested;
	ssize_t r = 1;
	if (want < sizeof ctl) /* too little room to judge one by its length: look first */
		r = ktls_recv(c->fd, ctl, sizeof ctl, &type, 0, MSG_PEEK);
	if (r > 0)
		r = type == CT_APPLICATION_DATA ? ktls_recv(c->fd, buf, want, &type, 0, 0)
						: ktls_recv(c->fd, ctl, sizeof ctl, &type, 0, 0);
	if (r < 0 && errno == EBADMSG) {
		c->bye = ALERT_BAD_RECORD_MAC; /* a record that fails authentication */
		errno = EPROTO;
	}
	if (r < 0 && errno != EAGAIN && errno != EINTR && errno != EPROTO)
		c->bye = -1; /* the socket is broken: nobody to tell */
	if (r == 0)
		c->bye = -1; /* TCP EOF without close_notify */
	if (r <= 0)
		return r;
	if (type == CT_APPLICATION_DATA) {
		c->turn_left -= (size_t)r;
		return r;
	}
	const unsigned char *b = want < sizeof ctl ? ctl : (const unsigned char *)buf;
	switch (ktls_control(type, b, (size_t)r, &alert, &requested)) {
	case KTLS_CLOSE_NOTIFY:
		return 0; /* answered with ours when we close */
	case KTLS_PEER_ALERT:
		c->bye = -1;
		break;
	default: /* a KeyUpdate this kernel cannot follow (before 6.14), or a bad record */
		c->bye = alert;
	}
	errno = EPROTO;
	return -1;
}

/*
 * Plaintext in, like read(2): > 0 bytes, 0 at the end of the client's data,
 * -1 with errno (EAGAIN: nothing more yet). With --tls it reads raw bytes
 * into the session (whole records are opened; a partial one waits in the
 * session's buffer for the rest) and hands out what they decrypt to; with
 * --ktls the kernel does that (conn_recv_kernel). The
 * client's close_notify is its end of data; a bad record or a fatal alert
 * ends the connection (EPROTO).
 */
static ssize_t conn_recv(struct conn *c, char *buf, size_t cap)
{
	if (c->turn_left == 0) { /* this turn's share is used up: the next turn */
		errno = EAGAIN;
		return -1;
	}
	if (c->ktls)
		return conn_recv_kernel(c, buf, cap < c->turn_left ? cap : c->turn_left);
	if (!c->tls) {
		ssize_t r = read(c->fd, buf, cap < c->turn_left ? cap : c->turn_left);
		if (r > 0)
			c->turn_left -= (size_t)r;
		return r;
	}
	for (;;) {
		int ev = 0;
		size_t k = tlsx_read(c->tls, buf, cap, &ev);
		if (k > 0)
			return (ssize_t)k;
		if (ev == TLSX_WANT_READ) {
			uint8_t *p;
			size_t room = tlsx_in_room(c->tls, &p);
			if (c->turn_left == 0) {
				errno = EAGAIN; /* records without data count against the share too */
				return -1;
			}
			ssize_t r = read(c->fd, p, room < c->turn_left ? room : c->turn_left);
			if (r > 0) {
				c->turn_left -= (size_t)r;
				tlsx_in_added(c->tls, (size_t)r);
				continue;
			}
			if (r == 0)
				c->bye = -1; /* TCP EOF without close_notify: nobody to tell */
			return r;
		}
		if (ev == TLSX_CLOSE_NOTIFY)
			return 0; /* answered with ours when we close */
		c->bye = ev == TLSX_FATAL ? c->tls->alert : -1;
		errno = EPROTO;
		return -1;
	}
}

/* Writes what is pending (with --tls: seals it first). 0: all out; 1: the
 * socket is full; -1: the connection is broken. */
static int conn_send(struct conn *c)
{
	for (;;) {
		char *buf = c->out;
		size_t *len = &c->out_len, *off = &c->out_off;
		if (c->tls) {
			if (c->tout_off == c->tout_len && c->out_len > 0) {
				size_t n;
				if (tlsx_seal_data(c->tls, c->out, c->out_len, c->tout, sizeof c->tout, &n,
						   NULL) < 0)
					return -1;
				c->tout_len = n;
				c->tout_off = 0;
				c->out_len = c->out_off = 0;
			}
			buf = (char *)c->tout;
			len = &c->tout_len;
			off = &c->tout_off;
		}
		if (*off >= *len) {
			*off = *len = 0;
			return 0;
		}
		ssize_t r = send(c->fd, buf + *off, *len - *off, MSG_NOSIGNAL);
		if (r > 0) {
			*off += (size_t)r;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return 1;
		return -1;
	}
}

/* Reads, responds, writes; closes when done (c may be freed on return).
 * One call is one connection's turn: TURN_ROUNDS rounds and TURN_BYTES of
 * input at most; what is left waits for the next turn of the loop. */
static void conn_io(struct worker *w, struct conn *c)
{
	c->turn_left = TURN_BYTES;
	if (c->lingering) {
		/* Discard until EOF: closing with unread bytes would send RST. A
		 * turn's share at a time: a client that keeps sending is called
		 * back by level-triggered EPOLLIN, after the others. */
		ssize_t r = 0;
		size_t seen = 0;
		while (seen < TURN_BYTES && (r = read(c->fd, c->in, sizeof c->in)) > 0)
			seen += (size_t)r;
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
			conn_close(w, c);
		return;
	}
	for (int round = 0; round < TURN_ROUNDS; round++) {
		while (!c->peer_eof && c->in_len < sizeof c->in) {
			size_t want = sizeof c->in - c->in_len;
			ssize_t r = conn_recv(c, c->in + c->in_len, want);
			if (r > 0) {
				c->in_len += (size_t)r;
				/* A short read on a plain socket drained it: asking again
				 * would only fetch EAGAIN. The loop is level-triggered, so
				 * bytes that arrive later wake us again. */
				if (!c->tls && (size_t)r < want)
					break;
				continue;
			}
			if (r == 0) {
				c->peer_eof = 1;
				break;
			}
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			conn_close(w, c); /* ECONNRESET and friends: the client is gone */
			return;
		}
		int held = conn_respond(w, c);
		int pending = conn_send(c);
		if (pending < 0) {
			conn_close(w, c);
			return;
		}
		/* Work that no byte on the socket will wake us for: requests
		 * buffered behind a full output buffer (pipelining), or, with
		 * --tls, whole records already read into the session. */
		int more = !pending && (held || (c->tls && !c->peer_eof && tlsx_buffered(c->tls)));
		/* Waiting to write: watch for room only. Level-triggered EPOLLIN on a
		 * client that sends and never reads would spin otherwise. With more
		 * to do, ask to be called back on the next turn (EPOLLOUT is ready on
		 * a socket with room). */
		uint32_t mask = pending ? EPOLLOUT : more ? EPOLLIN | EPOLLOUT : EPOLLIN;
		if (mask != c->mask) {
			c->mask = mask;
			ep_mod(w->ep, c->fd, mask, tag(T_CONN, (uint32_t)c->fd));
		}
		if (!pending && c->linger && !c->peer_eof) {
			/* We stopped reading mid-request. close() now, with the client's
			 * bytes unread, would make the kernel answer with a reset that
			 * can destroy our 400 before the client reads it: send FIN,
			 * drain what still comes, close at EOF or after a second. */
			tls_goodbye(c);
			shutdown(c->fd, SHUT_WR);
			c->lingering = 1;
			c->deadline = now_ms() + 1000;
			return;
		}
		if (!pending && (c->closing || (c->peer_eof && c->in_len == 0))) {
			conn_close(w, c);
			return;
		}
		if (!more)
			return;
	}
}

/* A slow client cannot pin a worker: whoever has not sent a whole request
 * head by its deadline gets a 408 and is closed; an idle keep-alive
 * connection is closed quietly. Draining closes idle ones at once. */
static void worker_sweep(struct worker *w, long long now)
{
	for (int fd = 0; fd < w->tabcap && w->open > 0; fd++) {
		struct conn *c = w->tab[fd];
		if (!c)
			continue;
		int idle = c->in_len == 0 && c->out_len == 0 && c->tout_len == 0;
		if (w->draining && idle) {
			conn_close(w, c);
			continue;
		}
		if (now < c->deadline)
			continue;
		if (c->in_len > 0 && c->out_len == 0 && c->tout_len == 0 && !c->lingering) {
			char msg[256];
			uint8_t sealed[256 + 64];
			size_t len = http_error(msg, sizeof msg, 408);
			const void *out = msg;
			if (c->tls) {
				if (tlsx_seal_data(c->tls, msg, len, sealed, sizeof sealed, &len, NULL) < 0)
					len = 0;
				out = sealed;
			}
			(void)!send(c->fd, out, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		}
		conn_close(w, c);
	}
}

void worker_start_drain(struct worker *w, const char *why)
{
	if (w->draining)
		return;
	w->draining = 1;
	w->drain_until = now_ms() + DRAIN_MS;
	if (w->lfd >= 0) { /* stop taking new connections */
		epoll_ctl(w->ep, EPOLL_CTL_DEL, w->lfd, NULL);
		close(w->lfd);
		w->lfd = -1;
	}
	if (w->chan >= 0)
		epoll_ctl(w->ep, EPOLL_CTL_DEL, w->chan, NULL); /* EOF stays readable forever */
	if (w->cfg->verbose || w->open > 0)
		say(w->n, "%s: finishing the %d connection(s) I hold, then exiting", why, w->open);
	worker_sweep(w, now_ms());
}

static void worker_accept(struct worker *w)
{
	for (int k = 0; k < 64; k++) {
		int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return; /* EAGAIN: another worker took it (reuseport: never), or none left */
		if (w->cfg->model == M_PROXY) {
			/* Our Unix listener has an address anyone on the machine can
			 * connect to. Only the dispatcher may: SO_PEERCRED names the
			 * process that connected (unix(7)); anyone else is closed
			 * before a byte is read or written. */
			pid_t pid;
			uid_t uid;
			if (fdpass_peer(fd, &pid, &uid, NULL) < 0 || pid != getppid() || uid != getuid()) {
				close(fd);
				continue;
			}
		}
		conn_add(w, fd, NULL, 0);
	}
}

/* A listener of our own (reuseport): same port, SO_REUSEPORT on every one,
 * and the kernel spreads new connections across the group by a hash. */
/*
 * A worker's life. `chan` is its end of the channel (-1 for a fork-per-conn
 * child), `lfd` a listener to accept on (reuseport, proxy) or -1, `conn` a
 * connection to serve from the start (fork-per-conn) or -1. Never returns.
 */
_Noreturn void worker_main(struct nar *n, const struct config *cfg, int chan, int lfd, int conn,
			   int port)
{
	struct worker w = { .n = n, .cfg = cfg, .chan = chan, .lfd = lfd, .pid = getpid() };
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	w.sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK); /* the mask is inherited, blocked */
	w.ep = epoll_create1(EPOLL_CLOEXEC);
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	w.tabcap = (int)(rl.rlim_cur < 1u << 20 ? rl.rlim_cur : 1u << 20);
	w.tab = calloc((size_t)w.tabcap, sizeof *w.tab);
	if (w.sfd < 0 || w.ep < 0 || !w.tab)
		die("worker setup (signalfd/epoll_create1/calloc)");
	ep_add(w.ep, w.sfd, EPOLLIN, tag(T_SIGNAL, 0));

	if (chan >= 0) {
		/* SO_PEERCRED on a socketpair names the process that created it: for
		 * our channel that must be our parent, running as our user. Anything
		 * else and we are not talking to our dispatcher. */
		pid_t ppid;
		uid_t uid;
		if (fdpass_peer(chan, &ppid, &uid, NULL) < 0)
			die("worker: getsockopt(SO_PEERCRED) on the channel");
		if (ppid != getppid() || uid != getuid()) {
			say(n, "the channel's peer (SO_PEERCRED pid %d) is not my parent; refusing it",
			    (int)ppid);
			exit(EXIT_RUNTIME);
		}
		ep_add(w.ep, chan, EPOLLIN, tag(T_CHAN, 0));
	}
	if (cfg->model == M_REUSEPORT) {
		w.lfd = listen_loopback_opts(port, NULL, LOOPBACK_REUSEPORT | LOOPBACK_NONBLOCK);
		if (w.lfd < 0)
			die("worker: socket/SO_REUSEPORT/bind/listen on port %d", port);
	}
	if (w.lfd >= 0)
		ep_add(w.ep, w.lfd, EPOLLIN, tag(T_LISTEN, 0));
	if (conn >= 0) {
		w.once = 1;
		conn_add(&w, conn, NULL, 0);
	}
	if (chan >= 0) {
		chan_tell(chan, MSG_READY, 0);
	}

	long long next_sweep = now_ms() + TICK_MS;
	struct epoll_event evs[256];
	for (;;) {
		if ((w.draining || w.once) && w.open == 0)
			break;
		if (w.draining && now_ms() >= w.drain_until)
			break;
		int k = epoll_wait(w.ep, evs, 256, TICK_MS);
		if (k < 0 && errno != EINTR)
			die("worker: epoll_wait");
		for (int i = 0; i < k; i++) {
			uint32_t kind = (uint32_t)(evs[i].data.u64 >> 32), idx = (uint32_t)evs[i].data.u64;
			if (kind == T_CHAN && !w.draining)
				worker_chan(&w);
			else if (kind == T_LISTEN && w.lfd >= 0)
				worker_accept(&w);
			else if (kind == T_SIGNAL) {
				struct signalfd_siginfo si;
				while (read(w.sfd, &si, sizeof si) == sizeof si)
					worker_start_drain(&w, "SIGTERM");
			} else if (kind == T_CONN && w.tab[idx])
				conn_io(&w, w.tab[idx]);
		}
		if (w.done && w.chan >= 0 && cfg->model == M_HANDOFF) {
			/* Closed connections, batched once per wakeup: the dispatcher's
			 * idea of our load, and of what a crash of ours would cost. */
			chan_tell(w.chan, MSG_DONE, w.done);
		}
		w.done = 0;
		long long now = now_ms();
		if (now >= next_sweep || w.draining) {
			worker_sweep(&w, now);
			next_sweep = now + TICK_MS;
		}
	}
	for (int fd = 0; fd < w.tabcap; fd++)
		if (w.tab[fd])
			conn_close(&w, w.tab[fd]); /* the drain bound ran out */
	free(w.tab);
	if (w.lfd >= 0)
		close(w.lfd);
	if (w.chan >= 0)
		close(w.chan);
	close(w.ep);
	close(w.sfd);
	nar_close(n);
	exit(0);
}


/* ---- a worker in a fresh process image ---------------------------------- */

/* Clears close-on-exec on fd (if it is one) so it survives execv. */
static int keep_over_exec(int fd)
{
	int fl = fd < 0 ? 0 : fcntl(fd, F_GETFD);
	return fd < 0 ? 0 : fl < 0 ? -1 : fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
}

/*
 * In a child just forked by the dispatcher: becomes a fresh copy of this
 * program in the worker role (worker_exec_main below), keeping only the
 * descriptors it is given: the channel, the proxy's Unix listener, the
 * narration's files. Everything else the fork copied goes with the old
 * image: the server's private key, the SSL objects of handshakes in
 * progress, the session states of connections waiting for other workers
 * (with --tls, the worker parses untrusted input with hand-written code, so
 * it must not hold them). Never returns; on failure exits 1, and the
 * dispatcher sees a worker that died before it was ready.
 */
_Noreturn void worker_exec(struct nar *n, const struct config *cfg, int chan, int lfd, int port)
{
	char a[12][24];
	snprintf(a[0], sizeof a[0], "%d", chan);
	snprintf(a[1], sizeof a[1], "%d", lfd);
	snprintf(a[2], sizeof a[2], "%d", n->trace_fd);
	snprintf(a[3], sizeof a[3], "%d", n->seq_fd);
	snprintf(a[4], sizeof a[4], "%d", n->quiet);
	snprintf(a[5], sizeof a[5], "%d", cfg->model);
	snprintf(a[6], sizeof a[6], "%d", cfg->tls);
	snprintf(a[7], sizeof a[7], "%d", cfg->header_ms);
	snprintf(a[8], sizeof a[8], "%d", cfg->verbose);
	snprintf(a[9], sizeof a[9], "%d", port);
	snprintf(a[10], sizeof a[10], "%d", cfg->workers);
	snprintf(a[11], sizeof a[11], "%d", cfg->ktls_on);
	char *argv[] = { "handoff_server", "--worker-role", (char *)n->role, a[0], a[1], a[2], a[3],
			 a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], NULL };
	if (keep_over_exec(chan) == 0 && keep_over_exec(lfd) == 0 &&
	    keep_over_exec(n->trace_fd) == 0 && keep_over_exec(n->seq_fd) == 0)
		execv("/proc/self/exe", argv); /* the same binary, even if the file was replaced */
	say(n, "execv /proc/self/exe: %s (%s)", strerrorname_np(errno), strerror(errno));
	_exit(EXIT_RUNTIME);
}

static int arg_int(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*end || v < -1 || v > 1 << 30) {
		fprintf(stderr, "handoff_server: --worker-role: bad number %s\n", s);
		exit(EXIT_USAGE);
	}
	return (int)v;
}

/* main() with "--worker-role ROLE CHAN LFD TRACE SEQ QUIET MODEL TLS
 * HEADER_MS VERBOSE PORT WORKERS KTLS_ON" (what worker_exec passes): the worker's
 * life in the fresh image. Not for people: the dispatcher starts it. */
_Noreturn void worker_exec_main(int argc, char **argv)
{
	static struct config cfg;
	static struct nar n;
	if (argc != 15) {
		fprintf(stderr, "handoff_server: --worker-role is for the dispatcher only\n");
		exit(EXIT_USAGE);
	}
	n.role = argv[2];
	n.trace_fd = arg_int(argv[5]);
	n.seq_fd = arg_int(argv[6]);
	n.quiet = arg_int(argv[7]);
	cfg.model = arg_int(argv[8]);
	cfg.tls = arg_int(argv[9]);
	cfg.header_ms = arg_int(argv[10]);
	cfg.verbose = arg_int(argv[11]);
	cfg.workers = arg_int(argv[13]);
	cfg.ktls_on = arg_int(argv[14]);
	int chan = arg_int(argv[3]), lfd = arg_int(argv[4]);
	/* back to close-on-exec: nothing a worker might run gets them */
	fcntl(chan, F_SETFD, FD_CLOEXEC);
	if (lfd >= 0)
		fcntl(lfd, F_SETFD, FD_CLOEXEC);
	if (cfg.tls) {
		/* The traffic keys of the sessions it takes over stay out of core
		 * dumps, and other processes of our user cannot ptrace it or read
		 * its memory through /proc (prctl(2), PR_SET_DUMPABLE). */
		prctl(PR_SET_DUMPABLE, 0);
	}
	worker_main(&n, &cfg, chan, lfd, -1, arg_int(argv[12]));
}
