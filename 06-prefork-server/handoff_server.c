/*
 * handoff_server.c - stage 06, the capstone: a pre-forked HTTP server whose
 * dispatcher accepts connections and hands them to workers with SCM_RIGHTS,
 * robustly; and, with the same responder, the three designs it is measured
 * against.
 *
 * Run it:    ./handoff_server                      narrated demo: two workers, a
 *                                                  built-in client, one worker that
 *                                                  crashes before acknowledging
 *            ./handoff_server --serve [--port N] [--workers N]
 *                            [--model handoff|fork-per-conn|reuseport|proxy]
 *            curl http://127.0.0.1:PORT/   ->   served by worker <pid>
 *            ./handoff_server --serve --tls          HTTPS: the dispatcher runs the
 *            curl -k https://127.0.0.1:PORT/          TLS 1.3 handshake (non-blocking,
 *                                                  in its epoll loop), then hands the
 *                                                  descriptor AND the session state
 *                                                  (stage 05's after-handshake handoff)
 *                                                  to a worker, which carries the
 *                                                  session on with stage 05's record layer
 *            kill -USR1 <dispatcher>       ->   one "counters: ..." line
 * Break it:  --die-before-ack N   the worker that receives the N-th connection
 *            dies before acknowledging it; the dispatcher still holds its copy,
 *            so it sends it to another worker and the client never notices.
 *            --respawn-fails   every replacement worker exits before it is ready
 *            (a broken deployment): respawns back off, 100 ms doubling to 5 s.
 *
 * The handoff model, step by step (the article's design, made robust):
 *   1. the dispatcher accept()s, and never adds the connection to its epoll
 *      set: it cannot read a byte that belongs to the worker (stage 04);
 *   2. it sends the descriptor with an id in the payload, up to 253 in one
 *      message when several are waiting (SCM_MAX_FD), over a SOCK_SEQPACKET
 *      socketpair (one message per send, so no framing to get wrong);
 *   3. it keeps its copy until the worker acknowledges the id, then closes
 *      it; if the worker dies first (channel EOF, SIGCHLD, or EPIPE on send -
 *      MSG_NOSIGNAL, so never SIGPIPE), the copy is still good and goes to
 *      another worker, and the dead worker is replaced;
 *   4. a worker that falls behind (too many un-acknowledged) gets nothing
 *      more; the dispatcher queues, up to --queue-max, and past that answers
 *      503 and closes, instead of growing without limit.
 * The other models: fork-per-conn (the design the article rejects: a fork()
 * per connection), reuseport (each worker accept()s on its own SO_REUSEPORT
 * socket: no handoff at all, the upper bound), proxy (the dispatcher keeps
 * the connection and copies bytes to and from a worker over a Unix socket).
 *
 * Article: the product's pre-forked design, and the promised "why not fork
 * per connection" - answered with numbers in README.md and bench/.
 * See also: unix(7) (SCM_RIGHTS, SO_PEERCRED, SOCK_SEQPACKET), recvmsg(2)
 * (MSG_CMSG_CLOEXEC), sendmsg(2) (MSG_NOSIGNAL), epoll(7), signalfd(2),
 * socket(7) (SO_REUSEPORT), accept4(2), fork(2), waitpid(2); for --tls,
 * ../05-ssl/tls_export.h, SSL_accept(3), SSL_get_error(3), RFC 8446.
 */
#define _GNU_SOURCE
#include "../03-scm-rights/fdpass.h"
#include "../common/cli.h"
#include "../common/narrate.h"
#include "../common/util.h"
#include "../05-ssl/handoff_state.h"
#include "../05-ssl/tls_export.h"
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define MAX_WORKERS 64
#define MAX_KIDS 4096     /* fork-per-conn: children alive at once */
#define DRAIN_MS 5000     /* SIGTERM: how long workers may finish what they hold */
#define OUT_MAX 2048      /* a connection's pending response bytes */
#define RELAY_BUF 16384   /* proxy: bytes in flight per direction */
#define TICK_MS 100       /* how often idle deadlines are checked */
/* --tls: an encoded session state without pending plaintext (the dispatcher
 * never reads application data), and the sealed form of a response buffer. */
#define TLS_STATE_MAX (HS_MAX_ENCODED - HS_MAX_PENDING)
#define TOUT_MAX (OUT_MAX + 4 * (REC_HEADER + 1 + REC_TAG + 8))

enum model { M_HANDOFF, M_FORK, M_REUSEPORT, M_PROXY };
static const char *const model_names[] = { "handoff", "fork-per-conn", "reuseport", "proxy", NULL };

static const char usage[] =
	"usage: handoff_server [--die-before-ack N] [--trace FILE] [--mermaid]\n"
	"       handoff_server --serve [--port N] [--workers N] [--model M] [options]\n"
	"Stage 06: a pre-forked HTTP server; the dispatcher hands each connection to a\n"
	"worker with SCM_RIGHTS, keeps its copy until the worker acknowledges it, and\n"
	"re-dispatches it if the worker dies first.\n"
	"  --workers N         worker processes (default: the number of cores)\n"
	"  --model M           handoff (default), fork-per-conn, reuseport or proxy\n"
	"  --die-before-ack N  break it: the worker given the N-th connection dies\n"
	"                      before acknowledging it (handoff model)\n"
	"  --header-timeout MS a client gets MS ms to send a request head (default 10000)\n"
	"  --inflight-max N    un-acknowledged descriptors per worker (default 1024)\n"
	"  --queue-max N       connections the dispatcher queues before it answers 503\n"
	"                      (default 4096)\n"
	"  --respawn-fails     break it: every replacement worker exits before it is\n"
	"                      ready; the dispatcher backs off instead of fork-looping\n"
	"  --tls               HTTPS (handoff model, with --serve): the dispatcher runs\n"
	"                      the TLS 1.3 handshake, then hands over the descriptor\n"
	"                      with the session state (stage 05's after-handshake mode)\n"
	"  --handshake-timeout MS  --tls: bound on one handshake (default 3000)\n"
	"  --read-ahead        break it (--tls): let OpenSSL read ahead, so a request that\n"
	"                      comes with the client's Finished strands raw bytes in it:\n"
	"                      the session cannot be exported, the dispatcher closes it\n"
	"SIGUSR1 prints one line: counters: accepted=.. handed_off=.. acked=..\n"
	"redispatched=.. respawned=.. refused=.. lost=.. tls_failed=.. tls_unexportable=..\n"
	"(also printed at exit)\n" COMMON_USAGE;

struct config {
	int model, workers, die_at, header_ms, inflight_max, queue_max;
	int respawn_fails; /* --respawn-fails */
	int verbose; /* the demo: narrate every connection */
	int tls, handshake_ms; /* --tls, --handshake-timeout */
	int read_ahead;        /* --read-ahead */
	SSL_CTX *ctx;          /* --tls: the dispatcher's server context */
};

/* ---- the channel's messages (one SOCK_SEQPACKET message each) ---------- */

enum { MSG_HANDOFF = 1, MSG_ACK, MSG_DONE, MSG_READY };
enum { ENTRY_CRASH = 1 }; /* --die-before-ack: die on this one, before the ack */

struct wire_entry {
	uint64_t id;    /* the dispatcher's number for the connection */
	uint32_t flags; /* ENTRY_CRASH */
	uint32_t state_len; /* --tls: bytes of this connection's encoded session
			       state (handoff_state.h); the states follow the
			       entries, in entry order. 0 without --tls */
};
struct wire {
	uint32_t type;  /* MSG_* */
	uint32_t count; /* HANDOFF/ACK: entries (= descriptors attached); DONE: connections closed */
	struct wire_entry e[FDPASS_MAX_FDS];
};
#define WIRE_LEN(n) (offsetof(struct wire, e) + (size_t)(n) * sizeof(struct wire_entry))
/* A handoff message at its largest: every entry with a session state. */
#define WIRE_CAP (sizeof(struct wire) + FDPASS_MAX_FDS * TLS_STATE_MAX)
union wire_buf {
	struct wire m;
	uint8_t b[WIRE_CAP];
};

/* epoll tags: what kind of descriptor woke us, and which one. */
enum { T_LISTEN = 1, T_SIGNAL, T_CHAN, T_CONN, T_DONE, T_HS };
static uint64_t tag(uint32_t kind, uint32_t idx)
{
	return (uint64_t)kind << 32 | idx;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ep_add(int ep, int fd, uint32_t events, uint64_t t)
{
	struct epoll_event e = { .events = events, .data.u64 = t };
	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

static int ep_mod(int ep, int fd, uint32_t events, uint64_t t)
{
	struct epoll_event e = { .events = events, .data.u64 = t };
	return epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
}

/* Blocks INT, TERM, CHLD and USR1 and returns a signalfd for them: signals
 * become events in the epoll loop instead of handlers racing the code. */
static int signals_as_events(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

/* =====================================================================
 * The worker: an epoll loop serving many connections at once, with the
 * same responder in every model.
 * ===================================================================== */

struct conn {
	int fd;
	int closing;         /* close once the pending response is out */
	int peer_eof;        /* the client shut down its side */
	int linger;          /* after an error answer: shut down our side, discard the rest */
	int lingering;       /* ... and now waiting for the client's EOF (bounded) */
	long long deadline;  /* the request head must be in by then */
	size_t in_len, out_len, out_off;
	char in[HTTP_REQ_MAX];
	char out[OUT_MAX];
	/* --tls: the session taken over from the dispatcher. `in` and `out` hold
	 * plaintext; `tout` the sealed records on their way to the socket. */
	struct tlsx_sess *tls;
	uint32_t mask;       /* the events registered for it in epoll */
	int bye;             /* the alert to send at close (close_notify), -1: none */
	size_t tout_len, tout_off;
	uint8_t tout[TOUT_MAX];
};

struct worker {
	struct nar *n;
	const struct config *cfg;
	int ep, chan, lfd, sfd;
	struct conn **tab; /* indexed by descriptor number */
	int tabcap;
	int open;          /* connections held */
	unsigned done;     /* closed since the last MSG_DONE */
	int draining;
	long long drain_until;
	int once;          /* fork-per-conn: exit when the connection is done */
	pid_t pid;
};

/* --tls: our last record, once: close_notify on a clean close, the fatal
 * alert after a bad record, nothing after the client's own alert. Best
 * effort (non-blocking): the client may be gone already. */
static void tls_goodbye(struct conn *c)
{
	uint8_t rec[64];
	size_t len;
	if (c->tls && c->bye >= 0 && tlsx_seal_alert(c->tls, c->bye, rec, sizeof rec, &len) == 0)
		(void)!send(c->fd, rec, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	c->bye = -1;
}

static void conn_close(struct worker *w, struct conn *c)
{
	/* EPOLL_CTL_DEL before close(): while the dispatcher still holds its copy,
	 * the open file lives on, and so would its registration in our epoll set
	 * (NOTES.md, the epoll trap) - events for a number we no longer own. */
	epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
	if (c->tls) {
		tls_goodbye(c);
		tlsx_sess_free(c->tls); /* keys and secrets wiped */
		free(c->tls);
	}
	close(c->fd);
	w->tab[c->fd] = NULL;
	free(c);
	w->open--;
	w->done++;
}

/* Takes fd over; with a session state (--tls), carries the session on with
 * stage 05's record layer. st is wiped either way. */
static int conn_add(struct worker *w, int fd, struct handoff_state *st)
{
	struct conn *c = fd < w->tabcap ? calloc(1, sizeof *c) : NULL;
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
	if (ep_add(w->ep, fd, EPOLLIN, tag(T_CONN, (uint32_t)fd)) < 0) {
		if (tls) {
			tlsx_sess_free(tls);
			free(tls);
		}
		close(fd);
		free(c);
		return -1;
	}
	w->tab[fd] = c;
	w->open++;
	return 0;
}

/* Appends the responses to every complete request buffered (pipelining). */
static void conn_respond(struct worker *w, struct conn *c)
{
	while (!c->closing && OUT_MAX - c->out_len >= 512) {
		size_t used, tlen;
		int ka;
		const char *target;
		int r = http_parse(c->in, c->in_len, &used, &ka, &target, &tlen);
		if (r == HTTP_MORE) {
			if (c->peer_eof)
				c->closing = 1; /* half a request, and no more coming */
			return;
		}
		if (r == HTTP_BAD) {
			c->out_len += http_error(c->out + c->out_len, OUT_MAX - c->out_len, 400);
			c->closing = c->linger = 1;
			c->in_len = 0;
			if (w->cfg->verbose)
				say(w->n, "fd %d: malformed or oversized request -> 400, closing", c->fd);
			return;
		}
		if (w->draining)
			ka = 0; /* shutting down: this is the connection's last answer */
		if (w->cfg->verbose) {
			say(w->n, "fd %d: GET %.*s -> 200 (%s)", c->fd, (int)tlen, target,
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
}

/*
 * Plaintext in, like read(2): > 0 bytes, 0 at the end of the client's data,
 * -1 with errno (EAGAIN: nothing more yet). With --tls it reads raw bytes
 * into the session (whole records are opened; a partial one waits in the
 * session's buffer for the rest) and hands out what they decrypt to. The
 * client's close_notify is its end of data; a bad record or a fatal alert
 * ends the connection (EPROTO).
 */
static ssize_t conn_recv(struct conn *c, char *buf, size_t cap)
{
	if (!c->tls)
		return read(c->fd, buf, cap);
	for (;;) {
		int ev = 0;
		size_t k = tlsx_read(c->tls, buf, cap, &ev);
		if (k > 0)
			return (ssize_t)k;
		if (ev == TLSX_WANT_READ) {
			uint8_t *p;
			size_t room = tlsx_in_room(c->tls, &p);
			ssize_t r = read(c->fd, p, room);
			if (r > 0) {
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

/* Reads, responds, writes; closes when done (c may be freed on return). */
static void conn_io(struct worker *w, struct conn *c)
{
	if (c->lingering) { /* discard until EOF: closing with unread bytes would send RST */
		ssize_t r;
		while ((r = read(c->fd, c->in, sizeof c->in)) > 0)
			;
		if (r == 0 || errno != EAGAIN)
			conn_close(w, c);
		return;
	}
	for (int round = 0; round < 4; round++) {
		while (!c->peer_eof && c->in_len < sizeof c->in) {
			ssize_t r = conn_recv(c, c->in + c->in_len, sizeof c->in - c->in_len);
			if (r > 0) {
				c->in_len += (size_t)r;
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
		conn_respond(w, c);
		int pending = conn_send(c);
		if (pending < 0) {
			conn_close(w, c);
			return;
		}
		/* Waiting to write: watch for room only. Level-triggered EPOLLIN on a
		 * client that sends and never reads would spin otherwise. With --tls,
		 * whole records already read from the socket wake no epoll_wait:
		 * while some wait in the session, ask to be called back at once
		 * (EPOLLOUT is ready on a socket with room). */
		uint32_t mask = pending ? EPOLLOUT
			      : c->tls && !c->peer_eof && tlsx_buffered(c->tls) ? EPOLLIN | EPOLLOUT
										: EPOLLIN;
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
		/* Loop again only if a full buffer stopped us and there is room now. */
		if (pending || c->in_len < sizeof c->in || c->peer_eof)
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
		if (c->in_len > 0 && c->out_len == 0 && !c->lingering) {
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

static void worker_start_drain(struct worker *w, const char *why)
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

static void send_msg(int chan, const struct wire *m, size_t len)
{
	/* Blocking, MSG_NOSIGNAL: if the dispatcher is gone we learn it from EOF. */
	ssize_t r;
	do
		r = send(chan, m, len, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
}

/* One message from the dispatcher: descriptors to serve. */
static void worker_chan(struct worker *w)
{
	static union wire_buf buf; /* one per process; large, so not on the stack */
	static struct handoff_state hs;
	struct wire *m = &buf.m;
	int fds[FDPASS_MAX_FDS];
	struct fdpass_rx rx = { .buf = &buf, .cap = sizeof buf, .fds = fds, .max_fds = FDPASS_MAX_FDS };
	/* fdpass_recv receives with MSG_CMSG_CLOEXEC: were a worker ever to exec
	 * a helper, no client connection would leak into it. */
	int st = fdpass_recv(w->chan, &rx);
	if (st == FDPASS_EOF) {
		worker_start_drain(w, "the dispatcher closed the channel");
		return;
	}
	/* Every entry's state length is checked before any state is looked at:
	 * with --tls each has one, of at most TLS_STATE_MAX bytes; without, none. */
	size_t states = 0;
	int bad = st != FDPASS_OK || (rx.msg_flags & MSG_TRUNC) || rx.len < WIRE_LEN(0) ||
		  m->type != MSG_HANDOFF || m->count != rx.nfds || rx.len < WIRE_LEN(m->count);
	for (size_t i = 0; !bad && i < m->count; i++) {
		uint32_t sl = m->e[i].state_len;
		bad = w->cfg->tls ? sl == 0 || sl > TLS_STATE_MAX : sl != 0;
		states += sl;
	}
	if (bad || rx.len != WIRE_LEN(m->count) + states) {
		OPENSSL_cleanse(&buf, rx.len < sizeof buf ? rx.len : sizeof buf);
		/* Nothing we can trust in it: close what came (fdpass already did on
		 * its own rejections) and stop. The dispatcher still holds every
		 * descriptor we did not acknowledge and gives them to someone else. */
		for (size_t i = 0; i < rx.nfds; i++)
			close(fds[i]);
		say(w->n, "bad message on the channel (%s); exiting", fdpass_strerror(st));
		exit(EXIT_RUNTIME);
	}
	const uint8_t *state = buf.b + WIRE_LEN(m->count);
	for (size_t i = 0; i < rx.nfds; i++) {
		if (w->cfg->verbose) {
			say(w->n, "recvmsg -> fd %d (connection #%llu), close-on-exec; watching it with epoll", fds[i],
			    (unsigned long long)m->e[i].id);
			ev(w->n, "recv", NULL, "id=%llu", (unsigned long long)m->e[i].id);
		}
		if (m->e[i].flags & ENTRY_CRASH) {
			say(w->n, "--die-before-ack: dying now, holding fd %d that I never acknowledged", fds[i]);
			ev(w->n, "crash", NULL, "id=%llu", (unsigned long long)m->e[i].id);
			raise(SIGKILL); /* as abrupt as a crash gets: no cleanup at all */
		}
		/* The id is only needed for the ack. With --tls the session state
		 * comes in the same message as the descriptor: it cannot arrive
		 * without it, or with another connection's. */
		if (!w->cfg->tls) {
			conn_add(w, fds[i], NULL);
		} else if (hs_decode(&hs, state, m->e[i].state_len) == 0) {
			conn_add(w, fds[i], &hs); /* wipes hs */
		} else {
			/* Cannot happen with our own dispatcher; fail closed: this
			 * connection is acknowledged (so it is not sent again) and
			 * closed, as no one can speak its session. */
			say(w->n, "connection #%llu: a session state I cannot decode; closing it",
			    (unsigned long long)m->e[i].id);
			close(fds[i]);
		}
		state += m->e[i].state_len;
	}
	/* the secrets are in the sessions now, and nowhere else in this process */
	OPENSSL_cleanse(buf.b + WIRE_LEN(m->count), states);
	m->type = MSG_ACK;
	if (w->cfg->verbose) {
		say(w->n, "acknowledging %u descriptor(s): until now the dispatcher's copy was what kept "
			  "the connection safe if I died", m->count);
		ev(w->n, "ack", "dispatcher", "count=%u", m->count);
	}
	send_msg(w->chan, m, WIRE_LEN(m->count));
}

static void worker_accept(struct worker *w)
{
	for (int k = 0; k < 64; k++) {
		int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return; /* EAGAIN: another worker took it (reuseport: never), or none left */
		conn_add(w, fd, NULL);
	}
}

/* A listener of our own (reuseport): same port, SO_REUSEPORT on every one,
 * and the kernel spreads new connections across the group by a hash. */
static int reuseport_listener(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, SOMAXCONN) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/*
 * A worker's life. `chan` is its end of the channel (-1 for a fork-per-conn
 * child), `lfd` a listener to accept on (reuseport, proxy) or -1, `conn` a
 * connection to serve from the start (fork-per-conn) or -1. Never returns.
 */
static _Noreturn void worker_main(struct nar *n, const struct config *cfg, int chan, int lfd,
				  int conn, int port)
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
		if (fdpass_peer(chan, &ppid, &uid, NULL) < 0 || ppid != getppid() || uid != getuid()) {
			say(n, "the channel's peer (SO_PEERCRED pid %d) is not my parent; refusing it",
			    (int)ppid);
			exit(EXIT_RUNTIME);
		}
		ep_add(w.ep, chan, EPOLLIN, tag(T_CHAN, 0));
	}
	if (cfg->model == M_REUSEPORT) {
		w.lfd = reuseport_listener(port);
		if (w.lfd < 0)
			die("worker: socket/SO_REUSEPORT/bind/listen on port %d", port);
	}
	if (w.lfd >= 0)
		ep_add(w.ep, w.lfd, EPOLLIN, tag(T_LISTEN, 0));
	if (conn >= 0) {
		w.once = 1;
		conn_add(&w, conn, NULL);
	}
	if (chan >= 0) {
		struct wire ready = { .type = MSG_READY };
		send_msg(chan, &ready, WIRE_LEN(0));
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
			struct wire d = { .type = MSG_DONE, .count = w.done };
			send_msg(w.chan, &d, WIRE_LEN(0));
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

/* =====================================================================
 * The dispatcher.
 * ===================================================================== */

struct pend {
	uint64_t id;
	int fd;
	int avoid;      /* re-dispatched: the slot whose worker died holding it */
	uint32_t flags; /* ENTRY_CRASH */
	uint32_t state_len; /* --tls: the encoded session state, kept with our */
	uint8_t *state;     /* copy of the descriptor until the ack, then wiped */
};

/* Our copy of a connection is done with: the session state goes too. */
static void pend_drop_state(struct pend *p)
{
	if (p->state) {
		OPENSSL_cleanse(p->state, p->state_len);
		free(p->state);
	}
	p->state = NULL;
	p->state_len = 0;
}

static void pend_close(struct pend *p)
{
	close(p->fd);
	pend_drop_state(p);
}

struct slot {
	char role[24];  /* "worker-0": names the worker in narration and diagrams */
	pid_t pid;
	int chan;       /* our end of the channel, non-blocking; -1 when dead */
	int alive, reaped, ready, blocked, draining;
	long long respawn_at; /* a back-off is running: fork a new worker then */
	int backoff_ms;
	struct pend *un; /* handed off, not yet acknowledged: a FIFO ring */
	unsigned un_head, un_count;
	long open;      /* acknowledged and not yet reported closed (proxy: relays) */
	int ulfd;       /* proxy: the worker's Unix listener, which we keep */
	struct sockaddr_un uaddr;
	socklen_t ualen;
};

struct counters {
	unsigned long long accepted, handed_off, acked, redispatched, respawned, refused, lost;
	unsigned long long tls_failed;       /* --tls: handshakes that failed or timed out */
	unsigned long long tls_unexportable; /* --tls: sessions not exportable exactly: closed */
};

struct relay { /* proxy: one client connection and its upstream to a worker */
	int cfd, ufd, slot;
	int c_eof, u_eof, c_shut, dead;
	size_t c2u_len, c2u_off, u2c_len, u2c_off;
	char c2u[RELAY_BUF], u2c[RELAY_BUF];
};

struct hs { /* --tls: a connection whose handshake the dispatcher is running */
	SSL *ssl;
	struct tlsx_capture *cap;
	struct pend p;
	long long deadline;
	uint32_t mask;
};

struct disp {
	struct nar *n;
	const struct config *cfg;
	int ep, lfd, sfd, port, reserve_fd;
	int accept_paused, stopping, announced;
	long long stop_deadline, pause_until;
	struct slot slots[MAX_WORKERS];
	struct pend *q; /* waiting for a worker: a deque (re-dispatch goes in front) */
	unsigned q_head, q_count, q_cap;
	uint64_t next_id;
	unsigned rr;
	struct counters c;
	pid_t *kids;     /* fork-per-conn */
	int nkids, kids_told;
	struct relay **rtab; /* proxy: indexed by descriptor */
	int rtabcap, nrelays;
	struct hs **htab; /* --tls: handshakes in progress, indexed by descriptor */
	int htabcap, nhs;
	/* the demo */
	pid_t client_pid;
	int go_fd, done_fd, client_status;
};

static void print_counters(const struct disp *d)
{
	out_line("counters: accepted=%llu handed_off=%llu acked=%llu redispatched=%llu respawned=%llu "
		 "refused=%llu lost=%llu tls_failed=%llu tls_unexportable=%llu",
		 d->c.accepted, d->c.handed_off, d->c.acked, d->c.redispatched, d->c.respawned,
		 d->c.refused, d->c.lost, d->c.tls_failed, d->c.tls_unexportable);
}

static struct pend *q_at(struct disp *d, unsigned i)
{
	return &d->q[(d->q_head + i) % d->q_cap];
}

static void q_push_back(struct disp *d, struct pend p)
{
	*q_at(d, d->q_count++) = p;
}

static void q_push_front(struct disp *d, struct pend p)
{
	d->q_head = (d->q_head + d->q_cap - 1) % d->q_cap;
	d->q[d->q_head] = p;
	d->q_count++;
}

static struct pend q_pop(struct disp *d)
{
	struct pend p = d->q[d->q_head];
	d->q_head = (d->q_head + 1) % d->q_cap;
	d->q_count--;
	return p;
}

/* 503 and close: the clean refusal when the queue is at its bound. */
static void refuse(struct disp *d, int fd)
{
	char msg[256];
	size_t len = http_error(msg, sizeof msg, 503);
	if (!d->cfg->tls) /* before a handshake a TLS client could not read it */
		(void)!send(fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	close(fd);
	d->c.refused++;
}

/* In a new child: close every descriptor that belongs to the dispatcher. A
 * worker that kept a copy of a queued or un-acknowledged connection would
 * keep it open after the real owner closed it (stage 01's lesson). */
static void close_inherited(struct disp *d, int keep_slot)
{
	int own[] = { d->lfd, d->sfd, d->ep, d->reserve_fd, d->go_fd, d->done_fd };
	for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
		if (own[i] >= 0)
			close(own[i]);
	for (int s = 0; s < d->cfg->workers; s++) {
		struct slot *sl = &d->slots[s];
		if (sl->chan >= 0)
			close(sl->chan);
		for (unsigned i = 0; i < sl->un_count; i++) /* and wipe our copies' secrets */
			pend_close(&sl->un[(sl->un_head + i) % (unsigned)d->cfg->inflight_max]);
		if (sl->ulfd >= 0 && s != keep_slot)
			close(sl->ulfd);
	}
	for (unsigned i = 0; i < d->q_count; i++)
		pend_close(q_at(d, i));
	for (int fd = 0; d->htab && fd < d->htabcap; fd++)
		if (d->htab[fd]) { /* the child has no business with these sessions */
			close(fd);
			tlsx_capture_wipe(d->htab[fd]->cap);
		}
	for (int fd = 0; d->rtab && fd < d->rtabcap; fd++)
		if (d->rtab[fd] && d->rtab[fd]->cfd == fd) {
			close(d->rtab[fd]->cfd);
			close(d->rtab[fd]->ufd);
		}
}

static void spawn(struct disp *d, int s, int again)
{
	struct slot *sl = &d->slots[s];
	int sv[2];
	/* SOCK_SEQPACKET: message boundaries are kept, so a handoff and an ack
	 * are each exactly one recvmsg - no framing to get wrong. */
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(sv[0]);
		int ulfd = sl->ulfd;
		close_inherited(d, s);
		d->n->role = sl->role;
		if (again && d->cfg->respawn_fails) {
			say(d->n, "--respawn-fails: exiting before I am ready, as a broken worker would");
			_exit(EXIT_RUNTIME);
		}
		worker_main(d->n, d->cfg, sv[1], ulfd, -1, d->port);
	}
	close(sv[1]);
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	sl->pid = pid;
	sl->chan = sv[0];
	sl->alive = 1;
	sl->reaped = sl->ready = sl->blocked = sl->draining = 0;
	sl->un_head = sl->un_count = 0;
	sl->open = 0;
	if (ep_add(d->ep, sl->chan, EPOLLIN, tag(T_CHAN, (uint32_t)s)) < 0)
		die("epoll_ctl(channel)");
	if (!d->cfg->verbose && d->announced) /* the first line must be "listening on" */
		say(d->n, "%s is pid %d", sl->role, (int)pid);
}

static void worker_died(struct disp *d, int s, const char *why);

/* Everything the worker has sent us. 0: still alive; -1: it is gone. */
static int chan_read(struct disp *d, int s)
{
	struct slot *sl = &d->slots[s];
	struct wire m;
	unsigned cap = (unsigned)d->cfg->inflight_max;
	for (;;) {
		struct fdpass_rx rx = { .buf = &m, .cap = sizeof m };
		int st = fdpass_recv(sl->chan, &rx); /* max_fds 0: a worker never sends one */
		if (st == FDPASS_EAGAIN)
			return 0;
		if (st == FDPASS_EOF || st == FDPASS_ESYS)
			return -1; /* EOF, or ECONNRESET: the worker is gone */
		if (st != FDPASS_OK || rx.len < WIRE_LEN(0) || (rx.msg_flags & MSG_TRUNC))
			return -1; /* a protocol violation: treat it as dead */
		if (m.type == MSG_READY) {
			sl->ready = 1;
		} else if (m.type == MSG_DONE) {
			sl->open -= m.count;
			if (sl->open < 0)
				sl->open = 0;
		} else if (m.type == MSG_ACK && rx.len == WIRE_LEN(m.count)) {
			for (unsigned i = 0; i < m.count; i++) {
				/* Acks come in the order we sent (one channel, in order). */
				struct pend *p = &sl->un[sl->un_head];
				if (sl->un_count == 0 || p->id != m.e[i].id)
					return -1;
				/* Only now is our copy redundant: the worker holds its own
				 * (and the session, with --tls: our copy of the state goes). */
				pend_close(p);
				if (d->cfg->verbose) {
					say(d->n, "%s acknowledged connection #%llu: close(fd %d), my copy; "
						  "I never watched it, and now I do not hold it either",
					    sl->role, (unsigned long long)p->id, p->fd);
					ev(d->n, "close_copy", NULL, "id=%llu",
					   (unsigned long long)p->id);
					char go = (char)('0' + s); /* demo: tell the client whom to talk to */
					(void)!write(d->go_fd, &go, 1);
				}
				sl->un_head = (sl->un_head + 1) % cap;
				sl->un_count--;
				sl->open++;
				d->c.acked++;
			}
		} else {
			return -1;
		}
	}
}

static int eligible(const struct disp *d, int s)
{
	const struct slot *sl = &d->slots[s];
	return sl->alive && !sl->blocked && !sl->draining &&
	       sl->un_count < (unsigned)d->cfg->inflight_max;
}

/* The least loaded worker (un-acknowledged + held), ties in rotation;
 * `avoid` only if nobody else can take it. -1: nobody can. */
static int pick(struct disp *d, int avoid)
{
	int best = -1;
	long best_load = 0;
	int nw = d->cfg->workers;
	for (int i = 1; i <= nw; i++) {
		int s = (int)((d->rr + (unsigned)i) % (unsigned)nw);
		if (!eligible(d, s) || s == avoid)
			continue;
		long load = (long)d->slots[s].un_count + d->slots[s].open;
		if (best < 0 || load < best_load)
			best = s, best_load = load;
	}
	if (best < 0 && avoid >= 0 && eligible(d, avoid))
		best = avoid;
	if (best >= 0)
		d->rr = (unsigned)best;
	return best;
}

/* Hands off what is queued: several at once in one message when they wait. */
static void dispatch(struct disp *d)
{
	static union wire_buf buf;
	struct wire *m = &buf.m;
	int fds[FDPASS_MAX_FDS];
	unsigned cap = (unsigned)d->cfg->inflight_max;
	while (d->q_count > 0) {
		int avoid = q_at(d, 0)->avoid;
		int s = pick(d, avoid);
		if (s < 0)
			return; /* everyone is full or busy: keep them queued */
		struct slot *sl = &d->slots[s];
		unsigned live = 0;
		for (int i = 0; i < d->cfg->workers; i++)
			live += eligible(d, i);
		unsigned n = (d->q_count + live - 1) / live; /* spread a burst over the workers */
		if (n > FDPASS_MAX_FDS)
			n = FDPASS_MAX_FDS;
		if (n > cap - sl->un_count)
			n = cap - sl->un_count;
		unsigned k = 0;
		while (k < n && k < d->q_count && q_at(d, k)->avoid == avoid) {
			struct pend *p = q_at(d, k);
			m->e[k] = (struct wire_entry){ .id = p->id, .flags = p->flags, .state_len = p->state_len };
			fds[k] = p->fd;
			k++;
		}
		/* --tls: each connection's session state after the entries, in the
		 * same message as its descriptor. */
		size_t len = WIRE_LEN(k);
		for (unsigned i = 0; i < k; i++) {
			struct pend *p = q_at(d, i);
			if (p->state_len) {
				memcpy(buf.b + len, p->state, p->state_len);
				len += p->state_len;
			}
		}
		m->type = MSG_HANDOFF;
		m->count = k;
		if (d->cfg->verbose)
			for (unsigned i = 0; i < k; i++) {
				say(d->n, "sendmsg(fd %d, connection #%llu) to %s; I keep my copy until it "
					  "acknowledges",
				    fds[i], (unsigned long long)m->e[i].id, sl->role);
				ev(d->n, "handoff", sl->role, "id=%llu",
				   (unsigned long long)m->e[i].id);
			}
		int st = fdpass_send(sl->chan, &buf, len, fds, k, NULL);
		OPENSSL_cleanse(buf.b + WIRE_LEN(k), len - WIRE_LEN(k));
		if (st == FDPASS_OK) {
			for (unsigned i = 0; i < k; i++) {
				struct pend p = q_pop(d);
				sl->un[(sl->un_head + sl->un_count) % cap] = p;
				sl->un_count++;
			}
			d->c.handed_off += k;
			continue;
		}
		if (st == FDPASS_EAGAIN || (st == FDPASS_ESYS && (errno == ENOBUFS || errno == ETOOMANYREFS))) {
			/* The channel is full: this worker is behind. Nothing more for it
			 * until it drains (EPOLLOUT). */
			sl->blocked = 1;
			ep_mod(d->ep, sl->chan, EPOLLIN | EPOLLOUT, tag(T_CHAN, (uint32_t)s));
			continue;
		}
		if (st == FDPASS_ESYS && (errno == EPIPE || errno == ECONNRESET)) {
			/* MSG_NOSIGNAL made a dead worker an EPIPE instead of a SIGPIPE. */
			worker_died(d, s, "sendmsg: EPIPE");
			continue;
		}
		die("sendmsg to %s (%s)", sl->role, fdpass_strerror(st));
	}
}

/*
 * A worker is gone. Its channel and its process go; every descriptor it had
 * not acknowledged - our copies are still open - goes back to the front of
 * the queue, marked to go to someone else; a new worker takes the slot.
 */
static void worker_died(struct disp *d, int s, const char *why)
{
	struct slot *sl = &d->slots[s];
	if (!sl->alive)
		return;
	chan_read(d, s); /* acknowledgements it sent before dying still count */
	sl->alive = 0;
	epoll_ctl(d->ep, EPOLL_CTL_DEL, sl->chan, NULL);
	close(sl->chan);
	sl->chan = -1;
	int st = 0;
	if (!sl->reaped) {
		/* A worker we asked to finish closes its channel just before it
		 * exits: wait for it (reap_child kills only after the bound). Any
		 * other EOF means it is broken: it may have closed the channel and
		 * still run, so kill it first. */
		if (!sl->draining)
			kill(sl->pid, SIGKILL);
		reap_child(sl->pid, WAIT_MS, &st);
		sl->reaped = 1;
	}
	unsigned cap = (unsigned)d->cfg->inflight_max;
	unsigned k = sl->un_count;
	if (sl->draining && k == 0) {
		/* We asked it to finish (shutdown): a normal exit, not a death. */
		if (d->cfg->verbose)
			say(d->n, "%s has finished and exited; reaped", sl->role);
		d->c.lost += (unsigned long long)sl->open;
		sl->open = 0;
		return;
	}
	if (d->cfg->verbose) {
		say(d->n, "%s died (%s) holding %u descriptor(s) it never acknowledged; my copies are "
			  "still open, so the clients lose nothing",
		    sl->role, why, k);
		ev(d->n, "worker_died", NULL, "unacked=%u", k);
	} else if (!d->stopping || k || sl->open) {
		say(d->n, "%s (pid %d) died (%s): %u un-acknowledged to re-dispatch, %ld acknowledged "
			  "connection(s) lost with it",
		    sl->role, (int)sl->pid, why, k, sl->open);
	}
	d->c.lost += (unsigned long long)sl->open;
	sl->open = 0;
	for (unsigned i = k; i-- > 0;) {
		struct pend p = sl->un[(sl->un_head + i) % cap];
		p.avoid = s;
		p.flags = 0; /* --die-before-ack fires once */
		q_push_front(d, p);
	}
	sl->un_count = 0;
	d->c.redispatched += k;
	if (!d->stopping && !sl->ready) {
		/* It died before it was even ready: whatever killed it will kill the
		 * next one too (a broken build, a missing file). Respawning at once
		 * would turn a crash loop into a fork loop: back off, 100 ms
		 * doubling up to 5 s, and let the other workers carry the load. */
		sl->backoff_ms = sl->backoff_ms ? sl->backoff_ms * 2 : 100;
		if (sl->backoff_ms > 5000)
			sl->backoff_ms = 5000;
		sl->respawn_at = now_ms() + sl->backoff_ms;
		say(d->n, "%s died before it was ready: respawning in %d ms, not at once", sl->role,
		    sl->backoff_ms);
	} else if (!d->stopping) {
		/* Replace it first: the new worker records nothing until it is given
		 * work, so the story stays in one order; the re-dispatched
		 * descriptors still go to another worker (`avoid`). */
		sl->backoff_ms = 0;
		if (d->cfg->verbose) {
			say(d->n, "forking a new %s; the re-dispatch goes to a worker that was already "
				  "running",
			    sl->role);
			ev(d->n, "respawn", NULL, "slot=%d", s);
		}
		spawn(d, s, 1);
		d->c.respawned++;
	}
}

/* Slots whose back-off has run out get their worker back. */
static void respawn_due(struct disp *d)
{
	long long now = now_ms();
	for (int s = 0; s < d->cfg->workers; s++) {
		struct slot *sl = &d->slots[s];
		if (sl->respawn_at && !sl->alive && !d->stopping && now >= sl->respawn_at) {
			sl->respawn_at = 0;
			spawn(d, s, 1);
			d->c.respawned++;
		}
	}
}

/* ---- proxy: relay bytes between a client and a worker -------------------- */

static void relay_free(struct disp *d, struct relay *r)
{
	epoll_ctl(d->ep, EPOLL_CTL_DEL, r->cfd, NULL);
	epoll_ctl(d->ep, EPOLL_CTL_DEL, r->ufd, NULL);
	close(r->cfd);
	close(r->ufd);
	d->rtab[r->cfd] = d->rtab[r->ufd] = NULL;
	if (d->slots[r->slot].open > 0)
		d->slots[r->slot].open--;
	d->nrelays--;
	free(r);
}

/* Moves bytes one step from src into buf (if empty) and from buf into dst.
 * Returns 1 if anything moved, 0 if not, -1 on an error. */
static int relay_step(int src, int dst, char *buf, size_t *len, size_t *off, int *eof)
{
	int moved = 0;
	if (!*eof && *len == 0) {
		ssize_t r = read(src, buf, RELAY_BUF);
		if (r > 0)
			*len = (size_t)r, *off = 0, moved = 1;
		else if (r == 0)
			*eof = 1, moved = 1;
		else if (errno != EAGAIN && errno != EINTR)
			return -1;
	}
	if (*off < *len) {
		ssize_t w = send(dst, buf + *off, *len - *off, MSG_NOSIGNAL);
		if (w > 0) {
			*off += (size_t)w;
			moved = 1;
			if (*off == *len)
				*len = *off = 0;
		} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
			return -1;
		}
	}
	return moved;
}

/* Edge-triggered: pump both directions until nothing moves. */
static void relay_pump(struct disp *d, struct relay *r)
{
	for (;;) {
		int a = relay_step(r->cfd, r->ufd, r->c2u, &r->c2u_len, &r->c2u_off, &r->c_eof);
		int b = relay_step(r->ufd, r->cfd, r->u2c, &r->u2c_len, &r->u2c_off, &r->u_eof);
		if (a < 0 || b < 0)
			break;
		if (r->c_eof && r->c2u_len == 0 && !r->c_shut) {
			shutdown(r->ufd, SHUT_WR); /* pass the client's EOF on */
			r->c_shut = 1;
		}
		if (r->u_eof && r->u2c_len == 0)
			break; /* the worker closed and all it said is delivered */
		if (!a && !b)
			return;
	}
	relay_free(d, r);
}

static void relay_start(struct disp *d, int cfd)
{
	int s = pick(d, -1);
	int ufd = -1;
	if (s >= 0 && cfd < d->rtabcap) {
		ufd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (ufd >= 0 &&
		    (ufd >= d->rtabcap ||
		     connect(ufd, (struct sockaddr *)&d->slots[s].uaddr, d->slots[s].ualen) < 0)) {
			close(ufd); /* EAGAIN: the worker's backlog is full */
			ufd = -1;
		}
	}
	struct relay *r = ufd >= 0 ? malloc(sizeof *r) : NULL;
	if (!r) {
		if (ufd >= 0)
			close(ufd);
		refuse(d, cfd);
		return;
	}
	*r = (struct relay){ .cfd = cfd, .ufd = ufd, .slot = s };
	d->rtab[cfd] = d->rtab[ufd] = r;
	d->nrelays++;
	d->slots[s].open++;
	uint32_t evs = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ep_add(d->ep, cfd, evs, tag(T_CONN, (uint32_t)cfd));
	ep_add(d->ep, ufd, evs, tag(T_CONN, (uint32_t)ufd));
	relay_pump(d, r);
}

/* ---- fork-per-conn ---------------------------------------------------------- */

static void fork_serve(struct disp *d, int fd)
{
	if (d->nkids >= MAX_KIDS) {
		refuse(d, fd);
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		refuse(d, fd);
		return;
	}
	if (pid == 0) {
		close_inherited(d, -1);
		d->n->role = "child";
		free(d->kids);
		worker_main(d->n, d->cfg, -1, -1, fd, d->port);
	}
	close(fd); /* the child has it; our copy would keep the connection open */
	d->kids[d->nkids++] = pid;
}

static void reap_kid(struct disp *d, pid_t pid)
{
	for (int i = 0; i < d->nkids; i++)
		if (d->kids[i] == pid) {
			d->kids[i] = d->kids[--d->nkids];
			return;
		}
}

/* ---- --tls: the handshake before the handoff ------------------------------------ */

/*
 * The dispatcher runs each connection's TLS 1.3 handshake itself, without
 * blocking: the connection is in its epoll set only while the handshake runs
 * (SSL_accept on a non-blocking socket, resumed on each readiness), and
 * taken out of it before the handoff - from then on it never watches it
 * again (stage 04). Each handshake has a deadline (--handshake-timeout), so
 * a client that connects and says nothing costs a descriptor for a while,
 * not the dispatcher's attention.
 */
static void hs_free(struct disp *d, struct hs *h, int close_fd)
{
	int fd = h->p.fd;
	epoll_ctl(d->ep, EPOLL_CTL_DEL, fd, NULL);
	d->htab[fd] = NULL;
	d->nhs--;
	if (h->cap) {
		tlsx_capture_wipe(h->cap);
		free(h->cap);
	}
	SSL_free(h->ssl);
	ERR_clear_error();
	if (close_fd)
		pend_close(&h->p);
	free(h);
}

/* The handshake is done: export the session (stage 05's after-handshake
 * handoff) and queue the connection with its state. Fail closed: a session
 * whose state cannot be exported exactly gets a close_notify and is closed,
 * never handed off broken. */
static void hs_finish(struct disp *d, struct hs *h)
{
	const char *code, *why = tlsx_cannot_export(h->ssl, h->cap, &code);
	struct handoff_state *st = why ? NULL : calloc(1, sizeof *st);
	uint8_t enc[TLS_STATE_MAX];
	size_t len = 0;
	if (!why && !st)
		why = "out of memory";
	if (!why) {
		tlsx_export(h->ssl, h->cap, st);
		if (hs_encode(st, enc, sizeof enc, &len) < 0 || !(h->p.state = malloc(len)))
			why = "the state does not encode";
		else
			memcpy(h->p.state, enc, len);
		h->p.state_len = (uint32_t)len;
		OPENSSL_cleanse(enc, sizeof enc);
		hs_wipe(st);
	}
	free(st);
	if (why) {
		say(d->n, "not handing off a TLS session I cannot export exactly (%s): closing it", why);
		SSL_shutdown(h->ssl); /* our close_notify: a clean end (non-blocking, best effort) */
		d->c.tls_unexportable++;
		hs_free(d, h, 1);
		return;
	}
	/* Free without a byte on the wire: a close_notify now would use a
	 * sequence number the worker is about to use. */
	SSL_set_quiet_shutdown(h->ssl, 1);
	struct pend p = h->p;
	h->p.state = NULL; /* it moves to the queue with the descriptor */
	hs_free(d, h, 0);  /* out of our epoll set before anyone else reads it */
	p.id = ++d->next_id;
	q_push_back(d, p);
}

/* One step of a handshake: when the socket is ready, or right after accept. */
static void hs_step(struct disp *d, struct hs *h)
{
	int r = SSL_accept(h->ssl);
	if (r == 1) {
		hs_finish(d, h);
		return;
	}
	int e = SSL_get_error(h->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		uint32_t mask = e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN;
		if (mask != h->mask && ep_mod(d->ep, h->p.fd, mask, tag(T_HS, (uint32_t)h->p.fd)) == 0)
			h->mask = mask;
		return;
	}
	d->c.tls_failed++; /* not TLS 1.3, not TLS at all, or the client left */
	hs_free(d, h, 1);
}

static void hs_start(struct disp *d, struct pend p)
{
	struct hs *h = p.fd < d->htabcap ? calloc(1, sizeof *h) : NULL;
	int one = 1;
	if (h) {
		h->p = p;
		h->cap = calloc(1, sizeof *h->cap);
		h->ssl = SSL_new(d->cfg->ctx);
	}
	if (!h || !h->cap || !h->ssl || !SSL_set_fd(h->ssl, p.fd) ||
	    ep_add(d->ep, p.fd, EPOLLIN, tag(T_HS, (uint32_t)p.fd)) < 0) {
		if (h) {
			free(h->cap);
			SSL_free(h->ssl);
		}
		free(h);
		ERR_clear_error();
		close(p.fd);
		d->c.tls_failed++;
		return;
	}
	SSL_set_app_data(h->ssl, h->cap);
	/* The session tickets are two small writes in a row: no Nagle delay. */
	setsockopt(p.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	h->mask = EPOLLIN;
	h->deadline = now_ms() + d->cfg->handshake_ms;
	d->htab[p.fd] = h;
	d->nhs++;
	hs_step(d, h); /* the ClientHello may be there already */
}

/* Handshakes past their deadline are closed and counted. */
static void hs_sweep(struct disp *d, int all)
{
	long long now = now_ms();
	for (int fd = 0, seen = 0; d->htab && fd < d->htabcap && seen < d->nhs; fd++) {
		struct hs *h = d->htab[fd];
		if (!h)
			continue;
		if (all || now >= h->deadline) {
			d->c.tls_failed++;
			hs_free(d, h, 1);
		} else {
			seen++;
		}
	}
}

/* ---- the loop ----------------------------------------------------------------- */

static void on_accept(struct disp *d)
{
	for (int k = 0; k < 512; k++) {
		/* SOCK_NONBLOCK here is for the worker: the flag travels with the open
		 * file, so the worker's epoll loop gets a non-blocking socket. */
		int fd = accept4(d->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				/* Out of descriptors: stop accepting for a tick, while acks
				 * free some (the listener would otherwise stay readable and
				 * the loop would spin). */
				epoll_ctl(d->ep, EPOLL_CTL_DEL, d->lfd, NULL);
				d->accept_paused = 1;
				d->pause_until = now_ms() + TICK_MS;
			}
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return;
		}
		d->c.accepted++;
		if (d->cfg->verbose) {
			say(d->n, "accept() -> fd %d (connection #%llu); it never enters my epoll set: I must not read "
				  "what belongs to a worker",
			    fd, (unsigned long long)d->next_id + 1);
			ev(d->n, "accept", NULL, "id=%llu", (unsigned long long)d->next_id + 1);
		}
		switch (d->cfg->model) {
		case M_HANDOFF:
			if (d->q_count + (unsigned)d->nhs >= (unsigned)d->cfg->queue_max) {
				refuse(d, fd);
				break;
			}
			struct pend p = {
				.id = d->next_id + 1,
				.fd = fd,
				.avoid = -1,
				.flags = d->c.accepted == (unsigned long long)d->cfg->die_at ? ENTRY_CRASH : 0,
			};
			if (d->cfg->tls) { /* queued when its handshake is done */
				hs_start(d, p);
				break;
			}
			d->next_id++;
			q_push_back(d, p);
			break;
		case M_FORK:
			fork_serve(d, fd);
			break;
		case M_PROXY:
			relay_start(d, fd);
			break;
		default:
			close(fd);
		}
	}
}

static void on_signal(struct disp *d)
{
	struct signalfd_siginfo si;
	while (read(d->sfd, &si, sizeof si) == sizeof si) {
		if (si.ssi_signo == SIGUSR1) {
			print_counters(d);
		} else if (si.ssi_signo == SIGCHLD) {
			int st;
			pid_t pid;
			while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
				if (pid == d->client_pid) {
					d->client_status = st;
					d->client_pid = 0;
					continue;
				}
				reap_kid(d, pid);
				for (int s = 0; s < d->cfg->workers; s++)
					if (d->slots[s].alive && d->slots[s].pid == pid) {
						char why[64];
						if (WIFSIGNALED(st))
							snprintf(why, sizeof why, "SIGCHLD: killed by signal %d",
								 WTERMSIG(st));
						else
							snprintf(why, sizeof why, "SIGCHLD: exit %d",
								 WEXITSTATUS(st));
						d->slots[s].reaped = 1;
						worker_died(d, s, why);
					}
			}
		} else if (!d->stopping) {
			d->stopping = 1;
			d->stop_deadline = now_ms() + DRAIN_MS + WAIT_MS;
			say(d->n, "%s: no new connections; the workers finish what they hold",
			    strsignal((int)si.ssi_signo));
		}
	}
}

static void stop_accepting(struct disp *d)
{
	if (d->lfd < 0)
		return;
	if (!d->accept_paused)
		epoll_ctl(d->ep, EPOLL_CTL_DEL, d->lfd, NULL);
	close(d->lfd);
	d->lfd = -1;
}

/* Stopping: once nothing is queued, un-acknowledged or relayed, tell each
 * worker "no more" (shutdown SHUT_WR: it reads EOF, drains, exits). */
static int stop_step(struct disp *d)
{
	stop_accepting(d);
	/* Proxy: the workers are told at once; their draining closes the
	 * upstream side of every relay, which then closes its client. */
	/* --tls: handshakes under way finish (or time out) and are handed off */
	int alive = d->nrelays, pending = d->q_count > 0 || d->nhs > 0;
	for (int s = 0; s < d->cfg->workers; s++)
		pending |= d->slots[s].alive && d->slots[s].un_count > 0;
	if (pending && d->q_count > 0) {
		int can = 0;
		for (int s = 0; s < d->cfg->workers; s++)
			can |= d->slots[s].alive && !d->slots[s].draining;
		if (!can) /* nobody left to give them to */
			while (d->q_count > 0) {
				struct pend p = q_pop(d);
				pend_close(&p);
				d->c.lost++;
			}
	}
	for (int s = 0; s < d->cfg->workers; s++) {
		struct slot *sl = &d->slots[s];
		if (!sl->alive)
			continue;
		alive++;
		if (!pending && !sl->draining) {
			shutdown(sl->chan, SHUT_WR);
			sl->draining = 1;
		}
	}
	if (d->cfg->model == M_FORK && d->nkids > 0 && !pending) {
		if (!d->kids_told)
			for (int i = 0; i < d->nkids; i++)
				kill(d->kids[i], SIGTERM); /* each finishes its connection, then exits */
		d->kids_told = 1;
		alive += d->nkids;
	}
	return alive == 0;
}

static void dispatcher_loop(struct disp *d)
{
	struct epoll_event evs[256];
	for (;;) {
		if (d->stopping) {
			if (stop_step(d))
				break;
			if (now_ms() >= d->stop_deadline) {
				say(d->n, "the drain bound ran out: killing what is left");
				for (int s = 0; s < d->cfg->workers; s++)
					if (d->slots[s].alive) {
						d->slots[s].reaped = 0;
						worker_died(d, s, "shutdown bound");
					}
				for (int i = 0; i < d->nkids; i++)
					reap_child(d->kids[i], 0, NULL);
				d->nkids = 0;
				for (int fd = 0; d->rtab && fd < d->rtabcap; fd++)
					if (d->rtab[fd])
						relay_free(d, d->rtab[fd]);
				hs_sweep(d, 1);
				stop_step(d);
				break;
			}
		}
		int k = epoll_wait(d->ep, evs, 256, TICK_MS);
		if (k < 0 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < k; i++) {
			uint32_t kind = (uint32_t)(evs[i].data.u64 >> 32), idx = (uint32_t)evs[i].data.u64;
			if (kind == T_LISTEN && d->lfd >= 0)
				on_accept(d);
			else if (kind == T_SIGNAL)
				on_signal(d);
			else if (kind == T_DONE) { /* demo: the client closed its pipe */
				epoll_ctl(d->ep, EPOLL_CTL_DEL, d->done_fd, NULL);
				d->stopping = 1;
				d->stop_deadline = now_ms() + DRAIN_MS + WAIT_MS;
			} else if (kind == T_CHAN && d->slots[idx].alive) {
				struct slot *sl = &d->slots[idx];
				if ((evs[i].events & EPOLLOUT) && sl->blocked) {
					sl->blocked = 0;
					ep_mod(d->ep, sl->chan, EPOLLIN, tag(T_CHAN, idx));
				}
				if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && chan_read(d, (int)idx) < 0)
					worker_died(d, (int)idx, "channel EOF");
			} else if (kind == T_HS && d->htab && d->htab[idx]) {
				hs_step(d, d->htab[idx]);
			} else if (kind == T_CONN && d->rtab && d->rtab[idx]) {
				relay_pump(d, d->rtab[idx]);
			}
		}
		respawn_due(d);
		if (d->nhs > 0)
			hs_sweep(d, 0);
		if (d->cfg->model == M_HANDOFF)
			dispatch(d);
		if (d->accept_paused && d->lfd >= 0 && !d->stopping && now_ms() >= d->pause_until) {
			d->accept_paused = 0;
			ep_add(d->ep, d->lfd, EPOLLIN, tag(T_LISTEN, 0));
		}
	}
}

/* Starts the workers (and waits until each says it is ready). */
static void start_workers(struct disp *d)
{
	for (int s = 0; s < d->cfg->workers; s++) {
		struct slot *sl = &d->slots[s];
		snprintf(sl->role, sizeof sl->role, "worker-%d", s);
		sl->chan = sl->ulfd = -1;
		sl->un = calloc((size_t)d->cfg->inflight_max, sizeof *sl->un);
		if (!sl->un)
			die("calloc");
		if (d->cfg->model == M_PROXY) {
			/* The worker's own listener, on an autobound abstract Unix address
			 * (bind with only the family): we connect to it per client. We
			 * keep it, so a respawned worker accepts what its predecessor's
			 * backlog still holds. */
			sl->ulfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			struct sockaddr_un a = { .sun_family = AF_UNIX };
			sl->ualen = sizeof sl->uaddr;
			if (sl->ulfd < 0 || bind(sl->ulfd, (struct sockaddr *)&a, sizeof(sa_family_t)) < 0 ||
			    listen(sl->ulfd, SOMAXCONN) < 0 ||
			    getsockname(sl->ulfd, (struct sockaddr *)&sl->uaddr, &sl->ualen) < 0)
				die("proxy: Unix listener for %s", sl->role);
		}
	}
	for (int s = 0; s < d->cfg->workers; s++)
		spawn(d, s, 0);
	for (int s = 0; s < d->cfg->workers; s++) {
		struct slot *sl = &d->slots[s];
		long long until = now_ms() + WAIT_MS;
		while (sl->alive && !sl->ready && now_ms() < until) {
			if (wait_readable(sl->chan, (int)(until - now_ms())) <= 0 || chan_read(d, s) < 0)
				die("%s did not start", sl->role);
		}
	}
}

static void disp_free(struct disp *d)
{
	for (int s = 0; s < MAX_WORKERS; s++) {
		free(d->slots[s].un);
		if (d->slots[s].ulfd >= 0)
			close(d->slots[s].ulfd);
	}
	free(d->q);
	free(d->kids);
	free(d->rtab);
	if (d->htab && d->nhs > 0)
		hs_sweep(d, 1);
	free(d->htab);
	if (d->reserve_fd >= 0)
		close(d->reserve_fd);
	close(d->sfd);
	close(d->ep);
}

static void disp_init(struct disp *d, struct nar *n, const struct config *cfg, int port)
{
	*d = (struct disp){ .n = n, .cfg = cfg, .lfd = -1, .reserve_fd = -1, .go_fd = -1, .done_fd = -1 };
	for (int s = 0; s < MAX_WORKERS; s++)
		d->slots[s].chan = d->slots[s].ulfd = -1;
	d->sfd = signals_as_events();
	d->ep = epoll_create1(EPOLL_CLOEXEC);
	if (d->sfd < 0 || d->ep < 0)
		die("signalfd/epoll_create1");
	ep_add(d->ep, d->sfd, EPOLLIN, tag(T_SIGNAL, 0));
	d->q_cap = (unsigned)(cfg->queue_max + cfg->workers * cfg->inflight_max);
	d->q = calloc(d->q_cap, sizeof *d->q);
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	if (cfg->model == M_FORK)
		d->kids = calloc(MAX_KIDS, sizeof *d->kids);
	if (cfg->model == M_PROXY) {
		d->rtabcap = (int)(rl.rlim_cur < 1u << 20 ? rl.rlim_cur : 1u << 20);
		d->rtab = calloc((size_t)d->rtabcap, sizeof *d->rtab);
	}
	if (cfg->tls) {
		d->htabcap = (int)(rl.rlim_cur < 1u << 20 ? rl.rlim_cur : 1u << 20);
		d->htab = calloc((size_t)d->htabcap, sizeof *d->htab);
	}
	if (!d->q || (cfg->model == M_FORK && !d->kids) || (cfg->model == M_PROXY && !d->rtab) ||
	    (cfg->tls && !d->htab))
		die("calloc");

	if (cfg->model == M_REUSEPORT) {
		/* Each worker listens on its own socket. We only bind one (never
		 * listen on it) to learn the port and to hold it while workers come
		 * and go: a bound, non-listening socket gets no connections. */
		d->reserve_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int one = 1;
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t sl = sizeof sa;
		if (d->reserve_fd < 0 ||
		    setsockopt(d->reserve_fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
		    bind(d->reserve_fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
		    getsockname(d->reserve_fd, (struct sockaddr *)&sa, &sl) < 0)
			die("socket/SO_REUSEPORT/bind on 127.0.0.1:%d", port);
		d->port = ntohs(sa.sin_port);
	} else {
		d->lfd = listen_loopback(port, &d->port);
		if (d->lfd < 0)
			die("socket/bind/listen on 127.0.0.1:%d", port);
		fcntl(d->lfd, F_SETFL, O_NONBLOCK); /* accept until EAGAIN */
	}
}

static int serve(struct nar *n, const struct config *cfg, int port)
{
	struct disp d;
	disp_init(&d, n, cfg, port);
	if (cfg->model != M_FORK)
		start_workers(&d);
	if (d.lfd >= 0)
		ep_add(d.ep, d.lfd, EPOLLIN, tag(T_LISTEN, 0));
	announce_listening(d.port);
	d.announced = 1;
	if (cfg->model == M_FORK)
		say(n, "model fork-per-conn: one child per connection");
	else
		say(n, "model %s, %d worker(s)", model_names[cfg->model], cfg->workers);
	for (int s = 0; cfg->model != M_FORK && s < cfg->workers; s++)
		say(n, "%s is pid %d", d.slots[s].role, (int)d.slots[s].pid);
	dispatcher_loop(&d);
	say(n, "all workers have exited; bye");
	print_counters(&d);
	disp_free(&d);
	return EXIT_LESSON;
}

/* =====================================================================
 * The demo: two workers, a client, one crash before the ack.
 * ===================================================================== */

/* Reads one response: its status and body. -1 on a timeout or bad bytes. */
static int read_response(int fd, char *body, size_t cap, int *closes)
{
	char buf[4096];
	size_t len = 0;
	char *end;
	while (!(end = memmem(buf, len, "\r\n\r\n", 4))) {
		ssize_t r = read_within(fd, buf + len, sizeof buf - 1 - len, WAIT_MS);
		if (r <= 0 || len + (size_t)r >= sizeof buf - 1)
			return -1;
		len += (size_t)r;
	}
	buf[len] = '\0';
	int status = 0;
	const char *cl = strcasestr(buf, "\r\nContent-Length:");
	if (sscanf(buf, "HTTP/1.1 %d", &status) != 1 || !cl)
		return -1;
	size_t want = strtoul(cl + 17, NULL, 10), have = len - (size_t)(end + 4 - buf);
	*closes = strcasestr(buf, "\r\nConnection: close") != NULL;
	if (want >= cap || have > want)
		return -1;
	memcpy(body, end + 4, have);
	while (have < want) {
		ssize_t r = read_within(fd, body + have, want - have, WAIT_MS);
		if (r <= 0)
			return -1;
		have += (size_t)r;
	}
	body[have] = '\0';
	return status;
}

/* One request on an open connection; 1 if it got a 200. */
static int client_get(struct nar *n, int fd, const char *path, int close_it, char *who)
{
	char req[256];
	int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: demo\r\n%s\r\n", path,
			   close_it ? "Connection: close\r\n" : "");
	ev(n, "request", who, "path=%s", path);
	if (write_all(fd, req, (size_t)len) < 0)
		return 0;
	char body[128];
	int closes = 0, status = read_response(fd, body, sizeof body, &closes);
	say(n, "GET %s -> %d \"%s\"%s", path, status, status > 0 ? body : "",
	    closes ? ", then close" : "");
	ev(n, "response", NULL, "status=%d", status);
	return status == 200;
}

static int demo_client(struct nar *n, int port, int go_fd)
{
	int ok = 0;
	char go, who[16];
	/* Connection A: two requests on one connection, the second closes it. */
	ev(n, "connect", "dispatcher", "conn=A");
	int a = connect_loopback(port);
	if (a < 0 || read_within(go_fd, &go, 1, WAIT_MS) != 1)
		return 1;
	snprintf(who, sizeof who, "worker-%c", go);
	say(n, "connected (connection A); the dispatcher says %s has it now", who);
	ok += client_get(n, a, "/first", 0, who);
	ok += client_get(n, a, "/second", 1, who);
	char x;
	int eof = read_within(a, &x, 1, WAIT_MS) == 0;
	close(a);
	/* Connection B: its first worker dies before acknowledging it. */
	ev(n, "connect", "dispatcher", "conn=B");
	int b = connect_loopback(port);
	if (b < 0 || read_within(go_fd, &go, 1, WAIT_MS) != 1)
		return 1;
	snprintf(who, sizeof who, "worker-%c", go);
	say(n, "connected (connection B); the dispatcher says %s has it now", who);
	ok += client_get(n, b, "/again", 1, who);
	close(b);
	return ok == 3 && eof ? 0 : 1;
}

static int demo(struct nar *n, struct config *cfg)
{
	cfg->workers = 2;
	cfg->verbose = 1;
	if (!cfg->die_at)
		cfg->die_at = 2;
	struct disp d;
	disp_init(&d, n, cfg, 0);
	say(n, "listening on 127.0.0.1:%d; %d pre-forked workers, connected by SOCK_SEQPACKET "
	       "socketpairs",
	    d.port, cfg->workers);
	int go[2], done[2];
	if (pipe2(go, O_CLOEXEC) < 0 || pipe2(done, O_CLOEXEC) < 0)
		die("pipe2");
	pid_t cli = fork();
	if (cli < 0)
		die("fork");
	if (cli == 0) {
		n->role = "client";
		close(go[1]);
		close(done[0]);
		close(d.lfd);
		unblock_signals();
		int rc = demo_client(n, d.port, go[0]);
		close(go[0]);
		close(done[1]);
		disp_free(&d);
		nar_close(n);
		exit(rc);
	}
	close(go[0]);
	close(done[1]);
	d.client_pid = cli;
	d.go_fd = go[1];
	d.done_fd = done[0];
	start_workers(&d);
	say(n, "connection #%d will be given to a worker that dies before acknowledging it "
	       "(--die-before-ack %d)",
	    cfg->die_at, cfg->die_at);
	ep_add(d.ep, d.lfd, EPOLLIN, tag(T_LISTEN, 0));
	ep_add(d.ep, d.done_fd, EPOLLIN, tag(T_DONE, 0));
	dispatcher_loop(&d);
	if (d.client_pid) { /* not yet reaped by the SIGCHLD path */
		reap_child(d.client_pid, WAIT_MS, &d.client_status);
		d.client_pid = 0;
	}
	int client_ok = WIFEXITED(d.client_status) && WEXITSTATUS(d.client_status) == 0;
	say(n, "the client got every answer%s; the crashed worker's connection was re-dispatched "
	       "from my copy",
	    client_ok ? "" : " - NOT");
	print_counters(&d);
	out_line("result: client_ok=%d accepted=%llu acked=%llu redispatched=%llu respawned=%llu",
		 client_ok, d.c.accepted, d.c.acked, d.c.redispatched, d.c.respawned);
	int ok = client_ok && d.c.redispatched == 1 && d.c.respawned == 1;
	close(d.go_fd);
	close(d.done_fd);
	disp_free(&d);
	return ok ? EXIT_LESSON : EXIT_RUNTIME;
}

int main(int argc, char **argv)
{
	enum { OPT_WORKERS = OPT_STAGE, OPT_MODEL, OPT_DIE, OPT_HEADER, OPT_INFLIGHT, OPT_QUEUE,
	       OPT_RESPAWN_FAILS, OPT_TLS, OPT_HANDSHAKE, OPT_READAHEAD };
	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "workers", required_argument, NULL, OPT_WORKERS },
		{ "model", required_argument, NULL, OPT_MODEL },
		{ "die-before-ack", required_argument, NULL, OPT_DIE },
		{ "header-timeout", required_argument, NULL, OPT_HEADER },
		{ "inflight-max", required_argument, NULL, OPT_INFLIGHT },
		{ "queue-max", required_argument, NULL, OPT_QUEUE },
		{ "respawn-fails", no_argument, NULL, OPT_RESPAWN_FAILS },
		{ "tls", no_argument, NULL, OPT_TLS },
		{ "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE },
		{ "read-ahead", no_argument, NULL, OPT_READAHEAD },
		{ 0 },
	};
	struct common_opts o = { 0 };
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	struct config cfg = {
		.model = M_HANDOFF,
		.workers = cores < 1 ? 1 : cores > MAX_WORKERS ? MAX_WORKERS : (int)cores,
		.header_ms = 10000,
		.inflight_max = 1024,
		.queue_max = 4096,
		.handshake_ms = 3000,
	};
	int model_given = 0, c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&o, c, optarg, usage))
			continue;
		switch (c) {
		case OPT_WORKERS: cfg.workers = (int)parse_long("--workers", optarg, 1, MAX_WORKERS); break;
		case OPT_MODEL: cfg.model = parse_choice("--model", optarg, model_names), model_given = 1; break;
		case OPT_DIE: cfg.die_at = (int)parse_long("--die-before-ack", optarg, 1, 1000000000); break;
		case OPT_HEADER: cfg.header_ms = (int)parse_long("--header-timeout", optarg, 10, 3600000); break;
		case OPT_INFLIGHT: cfg.inflight_max = (int)parse_long("--inflight-max", optarg, 1, 65536); break;
		case OPT_QUEUE: cfg.queue_max = (int)parse_long("--queue-max", optarg, 1, 1000000); break;
		case OPT_RESPAWN_FAILS: cfg.respawn_fails = 1; break;
		case OPT_TLS: cfg.tls = 1; break;
		case OPT_READAHEAD: cfg.read_ahead = 1; break;
		case OPT_HANDSHAKE: cfg.handshake_ms = (int)parse_long("--handshake-timeout", optarg, 10, 600000); break;
		}
	}
	common_done(&o, argc, argv, usage);
	if (!o.serve && model_given && cfg.model != M_HANDOFF)
		usage_error("the demo shows the handoff model; --model goes with --serve");
	if (cfg.die_at && cfg.model != M_HANDOFF)
		usage_error("--die-before-ack goes with the handoff model");
	if (!o.serve && cfg.respawn_fails)
		usage_error("--respawn-fails goes with --serve");
	if (cfg.respawn_fails && cfg.model == M_FORK)
		usage_error("--respawn-fails needs workers: not with fork-per-conn");
	if (!o.serve && cfg.die_at > 2)
		usage_error("the demo makes two connections: --die-before-ack 1 or 2");
	if (cfg.tls && (!o.serve || cfg.model != M_HANDOFF))
		usage_error("--tls goes with --serve and the handoff model");
	if (cfg.read_ahead && !cfg.tls)
		usage_error("--read-ahead goes with --tls");
	signal(SIGPIPE, SIG_IGN); /* belt and braces: every send already says MSG_NOSIGNAL */

	/* A thousand connections need a thousand descriptors, in the dispatcher
	 * (queued, un-acknowledged) and in a worker: raise the soft limit. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	/* --tls: a P-256 key and a self-signed certificate made in memory, and
	 * stage 05's server context (TLS 1.3 only, read-ahead off, the keylog and
	 * message callbacks that capture what the handoff needs). */
	EVP_PKEY *pkey = NULL;
	X509 *cert = NULL;
	if (cfg.tls) {
		const struct tlsx_ctx_opts co = { .tickets = 2, .read_ahead = cfg.read_ahead };
		const char *failed = "tlsx_make_identity";
		if (tlsx_make_identity(&pkey, &cert) < 0 || !(cfg.ctx = tlsx_server_ctx(&co, pkey, cert, &failed)))
		{
			const char *why = ERR_reason_error_string(ERR_get_error());
			die("%s (OpenSSL: %s)", failed, why ? why : "no reason given");
		}
	}

	struct nar n;
	if (nar_open(&n, "dispatcher", o.trace, o.mermaid) < 0)
		die("open trace file");
	int rc = o.serve ? serve(&n, &cfg, o.port) : demo(&n, &cfg);
	if (o.mermaid)
		nar_mermaid(&n, stdout);
	nar_close(&n);
	SSL_CTX_free(cfg.ctx);
	X509_free(cert);
	EVP_PKEY_free(pkey);
	return rc;
}
