/*
 * dispatch.c - stage 05's parent: every accepted connection, from accept()
 * until it is handed over or closed.
 *
 * --serve runs one poll(2) loop over the listener, the signals, the workers'
 * channels and every connection still in the parent's hands. Handshakes and
 * first lines run on non-blocking sockets and resume where OpenSSL stopped
 * (parent_step() in ssl_handoff.c), so a slow or silent client holds up no
 * one. Each connection has a deadline fixed when it arrives: IDLE_MS for its
 * handshake and first line, then, if the handoff is refused, KEPT_MS in all
 * while the parent serves it. At most MAX_CONNS connections are in the
 * parent's hands at once; more wait in the listen backlog.
 *
 * --route-by-sni (before-handshake): a connection first waits here, up to
 * IDLE_MS, until its ClientHello can be read with MSG_PEEK (peek_route());
 * then it goes to the worker its server_name names, untouched.
 *
 * The narrated demo handles its one connection with parent_handle(): the
 * same steps on a blocking socket, each read bounded by SO_RCVTIMEO.
 *
 * Run it: ./ssl_handoff --serve --mode after-handshake [--port N]
 * See also: poll(2), SSL_get_error(3) (SSL_ERROR_WANT_READ), SSL_want(3),
 * recv(2) MSG_PEEK, socket(7) SO_RCVTIMEO and SO_RCVLOWAT, sni.h,
 * ssl_handoff.c (the lesson).
 */
#define _GNU_SOURCE
#include "../common/cli.h"
#include "../common/escape.h"
#include "sni.h"
#include "ssl05.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define MAX_CONNS 64           /* connections in the parent's hands at once */
#define KEPT_MS (WAIT_MS * 3)  /* the whole life of a connection the parent keeps */

/* ---- one connection --------------------------------------------------- */

/* Options every accepted connection gets, before anything is read. */
static void setup_conn(int conn)
{
	set_timeouts(conn, IDLE_MS);
	/* A line protocol of small records: without TCP_NODELAY the second of two
	 * small writes (the two session tickets) waits for a delayed ACK. */
	int one = 1;
	setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* A connection for the parent's handshake, owning conn from here on (closed
 * by pconn_free). NULL (and conn closed) when out of memory. */
static struct pconn *pconn_new(const struct nar *n, SSL_CTX *ctx, int conn)
{
	struct pconn *pc = calloc(1, sizeof *pc);
	if (!pc) {
		close(conn);
		return NULL;
	}
	pc->fd = conn;
	pc->c = calloc(1, sizeof *pc->c);
	pc->l = calloc(1, sizeof *pc->l);
	pc->ssl = SSL_new(ctx);
	if (!pc->c || !pc->l || !pc->ssl || !SSL_set_fd(pc->ssl, conn)) {
		say(n, "out of memory: closing fd %d", conn);
		pconn_free(pc);
		return NULL;
	}
	/* the capture callbacks find their record through the SSL object */
	SSL_set_app_data(pc->ssl, pc->c);
	return pc;
}

/* Frees what pc holds (the SSL object quietly) and closes its descriptor. */
void pconn_free(struct pconn *pc)
{
	if (pc->ssl)
		SSL_set_quiet_shutdown(pc->ssl, 1);
	SSL_free(pc->ssl);
	if (pc->fd >= 0)
		close(pc->fd);
	if (pc->c)
		tlsx_capture_wipe(pc->c);
	if (pc->l)
		OPENSSL_cleanse(pc->l, sizeof *pc->l);
	free(pc->c);
	free(pc->l);
	OPENSSL_cleanse(pc, sizeof *pc);
	free(pc);
}

/* The demo's one connection, on a blocking socket: conn is handed over or
 * closed before this returns. */
void parent_handle(struct nar *n, const struct opts *o, SSL_CTX *ctx, struct pool *p, int conn)
{
	setup_conn(conn);
	if (o->mode == MODE_BEFORE) {
		hand_off_before(n, p, pick_worker(p), conn);
		return;
	}
	struct pconn *pc = pconn_new(n, ctx, conn);
	if (!pc)
		return;
	int s = parent_step(n, o, p, pc);
	if (s == STEP_WAIT) { /* blocking: a read timed out */
		say(n, "no handshake and first line within %d s: closing fd %d", IDLE_MS / 1000, pc->fd);
		ev(n, "timeout", NULL, "stage=first_line");
	} else if (s == STEP_SERVE) {
		ssl_serve_lines_blocking(n, o, pc->ssl, pc->l);
	}
	pconn_free(pc);
}

/* ---- the --serve loop ------------------------------------------------- */

enum { FREE, PEEKING, HANDSHAKING, KEPT };

struct slot {
	int state;
	int fd;             /* the connection */
	struct pconn *pc;   /* HANDSHAKING, KEPT: its TLS side (pc->fd == fd) */
	long long deadline; /* CLOCK_MONOTONIC ms: closed when reached */
};

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void drop(struct slot *s)
{
	if (s->pc)
		pconn_free(s->pc); /* closes s->fd too */
	else
		close(s->fd);
	*s = (struct slot){ .state = FREE, .fd = -1 };
}

/* The next live worker after the last one picked, or -1. */
static int round_robin(struct pool *p)
{
	for (int k = 0; k < p->n; k++) {
		int i = (p->next + k) % p->n;
		if (p->chan[i] >= 0) {
			p->next = i + 1;
			return i;
		}
	}
	return -1;
}

/*
 * --route-by-sni: looks at the ClientHello on s->fd without consuming a byte
 * and chooses its worker by server_name. Returns the worker (>= 0), -1 to
 * wait for more bytes, -2 to close the connection (said and traced).
 */
static int peek_route(const struct nar *n, const struct opts *o, struct pool *p, struct slot *s)
{
	uint8_t buf[SNI_PEEK_CAP];
	char name[SNI_MAX_NAME + 1], shown[ESCAPED_CAP(SNI_MAX_NAME)];
	size_t name_len = 0;
	const char *why;
	/* lesson: peek_client_hello */
	/* MSG_PEEK copies what the socket holds and leaves it there: the worker's
	 * SSL_accept will read the very same ClientHello. */
	ssize_t got = recv(s->fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
	if (got < 0 && (errno == EAGAIN || errno == EINTR))
		return -1;
	if (got <= 0) {
		say(n, "fd %d closed before a whole ClientHello: closing it", s->fd);
		ev(n, "sni", NULL, "outcome=closed");
		return -2;
	}
	enum sni_result r = sni_parse(buf, (size_t)got, name, &name_len, &why);
	if (r == SNI_MORE && (size_t)got == sizeof buf) {
		r = SNI_GARBAGE;
		why = "no whole ClientHello in 32 KiB";
	}
	/* Part of a hello and the client's side shut: the bytes stay readable,
	 * so only POLLRDHUP tells that no more will come. */
	struct pollfd hup = { .fd = s->fd, .events = POLLRDHUP };
	if (r == SNI_MORE && poll(&hup, 1, 0) == 1 && (hup.revents & POLLRDHUP)) {
		say(n, "fd %d closed before a whole ClientHello: closing it", s->fd);
		ev(n, "sni", NULL, "outcome=closed");
		return -2;
	}
	if (r == SNI_MORE) {
		say(n, "fd %d: %zd bytes of ClientHello so far, waiting for %s", s->fd, got, why);
		ev(n, "sni", NULL, "outcome=more bytes=%zd", got);
		/* poll() would report the same unread bytes at once, again and again:
		 * SO_RCVLOWAT makes it wait for at least one byte more. */
		int low = (int)got + 1;
		setsockopt(s->fd, SOL_SOCKET, SO_RCVLOWAT, &low, sizeof low);
		return -1;
	}
	/* end lesson */
	if (r == SNI_GARBAGE) {
		say(n, "fd %d: not a TLS ClientHello (%s): closing it", s->fd, why);
		ev(n, "sni", NULL, "outcome=garbage");
		return -2;
	}
	int w = -1;
	for (int i = 0; r == SNI_FOUND && i < o->nroutes && w < 0; i++)
		if (strlen(o->routes[i].name) == name_len && strncasecmp(o->routes[i].name, name, name_len) == 0)
			w = o->routes[i].worker;
	int routed = w >= 0 && w < p->n && p->chan[w] >= 0;
	if (!routed)
		w = round_robin(p);
	escape_bytes(shown, sizeof shown, name, r == SNI_FOUND ? name_len : 0, ESCAPE_SPACE);
	say(n, "fd %d: server_name %s%s%s: worker %d, by %s; nothing read, the ClientHello waits there",
	    s->fd, r == SNI_FOUND ? "\"" : "", r == SNI_FOUND ? shown : "absent",
	    r == SNI_FOUND ? "\"" : "", w, routed ? "--route" : "round-robin");
	ev(n, "route", NULL, "sni=%s worker=%d by=%s", r == SNI_FOUND ? shown : "-", w,
	   routed ? "route" : "round_robin");
	/* SO_RCVLOWAT belongs to the socket, which the worker shares: back to 1. */
	int one = 1;
	setsockopt(s->fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
	return w < 0 ? -2 : w;
}

/* Moves one connection on: its socket is ready, or its deadline passed. */
static void advance(struct nar *n, const struct opts *o, struct pool *p, struct slot *s)
{
	int late = now_ms() >= s->deadline;
	if (s->state == PEEKING) {
		int w = late ? -2 : peek_route(n, o, p, s);
		if (late) {
			say(n, "fd %d: no whole ClientHello within %d s: closing it", s->fd, IDLE_MS / 1000);
			ev(n, "sni", NULL, "outcome=timeout");
		}
		if (w == -1)
			return;
		if (w >= 0) {
			hand_off_before(n, p, w, s->fd); /* closes our copy */
			s->fd = -1;
		}
		drop(s);
		return;
	}
	if (s->state == HANDSHAKING) {
		if (late) {
			say(n, "fd %d: no handshake and first line within %d s: closing it", s->pc->fd,
			    IDLE_MS / 1000);
			ev(n, "timeout", NULL, "stage=first_line");
			drop(s);
			return;
		}
		int r = parent_step(n, o, p, s->pc);
		if (r == STEP_WAIT)
			return;
		if (r == STEP_DONE) {
			drop(s);
			return;
		}
		/* Kept by the parent: served from this loop too, and for a bounded time. */
		set_nonblocking(s->pc->fd, 1);
		s->state = KEPT;
		s->deadline = now_ms() + KEPT_MS;
		late = 0;
	}
	if (late) {
		say(n, "fd %d: a connection I keep gets %d s in all, and they are over: closing it",
		    s->pc->fd, KEPT_MS / 1000);
		ev(n, "timeout", NULL, "stage=kept");
		drop(s);
		return;
	}
	if (ssl_serve_lines(n, o, s->pc->ssl, s->pc->l) == 1)
		drop(s);
}

/* A new connection: straight to a worker (before-handshake), or into a slot. */
static void arrive(struct nar *n, const struct opts *o, SSL_CTX *ctx, struct pool *p,
		   struct slot *slots, int conn)
{
	setup_conn(conn);
	if (o->mode == MODE_BEFORE && !o->route_by_sni) {
		hand_off_before(n, p, pick_worker(p), conn);
		return;
	}
	struct slot *s = NULL;
	for (int i = 0; i < MAX_CONNS && !s; i++)
		if (slots[i].state == FREE)
			s = &slots[i];
	if (!s) {
		close(conn); /* not reached: the listener is not polled when full */
		return;
	}
	if (o->mode == MODE_BEFORE) {
		*s = (struct slot){ .state = PEEKING, .fd = conn, .deadline = now_ms() + IDLE_MS };
		return;
	}
	struct pconn *pc = pconn_new(n, ctx, conn);
	if (!pc)
		return;
	set_nonblocking(conn, 1);
	*s = (struct slot){ .state = HANDSHAKING, .fd = conn, .pc = pc, .deadline = now_ms() + IDLE_MS };
}

int serve(struct nar *n, struct opts *o, SSL_CTX *ctx, int port)
{
	int lfd = listen_loopback(port, &port);
	if (lfd < 0)
		die("socket/bind/listen on 127.0.0.1:%d", port);
	int sfd = signal_fd(0);
	if (sfd < 0)
		die("signalfd");
	struct slot *slots = calloc(MAX_CONNS, sizeof *slots);
	if (!slots)
		die("calloc");
	announce_listening(port);
	say_ktls(n, o);
	struct pool p = { 0 };
	start_workers(n, o, ctx, &p, lfd, sfd);
	say(n, "mode %s: every connection goes to a worker", mode_names[o->mode]);
	enum { BASE = 2 + MAX_WORKERS };
	for (;;) {
		struct pollfd pf[BASE + MAX_CONNS];
		int used = 0, timeout = -1;
		long long now = now_ms();
		for (int i = 0; i < MAX_CONNS; i++) {
			pf[BASE + i] = (struct pollfd){ .fd = -1 };
			if (slots[i].state == FREE)
				continue;
			used++;
			/* OpenSSL says which way it is stuck (a handshake may want to write). */
			struct pconn *pc = slots[i].pc;
			short want = pc && pc->ssl && SSL_want_write(pc->ssl) ? POLLOUT : POLLIN;
			pf[BASE + i] = (struct pollfd){ .fd = slots[i].fd, .events = want };
			long long left = slots[i].deadline - now;
			int ms = left < 0 ? 0 : (int)left;
			if (timeout < 0 || ms < timeout)
				timeout = ms;
		}
		/* A full table leaves new clients in the backlog, not in a slot. */
		pf[0] = (struct pollfd){ .fd = lfd, .events = used < MAX_CONNS ? POLLIN : 0 };
		pf[1] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		for (int i = 0; i < MAX_WORKERS; i++)
			pf[2 + i] = (struct pollfd){ .fd = i < p.n ? p.chan[i] : -1, .events = POLLIN };
		if (poll(pf, BASE + MAX_CONNS, timeout) < 0) { /* clients, workers, a signal */
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (pf[1].revents)
			break;
		for (int i = 0; i < p.n; i++)
			if (p.chan[i] >= 0 && pf[2 + i].revents && read_done(&p, i) < 0)
				say(n, "worker %d is gone", i);
		now = now_ms();
		for (int i = 0; i < MAX_CONNS; i++)
			if (slots[i].state != FREE && (pf[BASE + i].revents || now >= slots[i].deadline))
				advance(n, o, &p, &slots[i]);
		if (!(pf[0].revents & POLLIN))
			continue;
		int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (conn >= 0)
			arrive(n, o, ctx, &p, slots, conn);
	}
	say(n, "shutting down: closing the workers' channels");
	for (int i = 0; i < MAX_CONNS; i++)
		if (slots[i].state != FREE)
			drop(&slots[i]);
	free(slots);
	for (int i = 0; i < p.n; i++)
		if (p.pid[i] > 0)
			kill(p.pid[i], SIGTERM);
	stop_workers(&p);
	close(sfd);
	close(lfd);
	return EXIT_LESSON;
}
