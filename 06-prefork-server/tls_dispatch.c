/*
 * tls_dispatch.c - stage 06 --tls: the dispatcher runs each connection's
 * TLS 1.3 handshake itself, non-blocking, in its epoll loop; when it is done
 * it exports the session (stage 05's after-handshake handoff) and queues the
 * connection with its state for handoff_server.c's dispatch().
 *
 * Run it:  ./handoff_server --serve --tls;  curl -k https://127.0.0.1:PORT/
 * See also: SSL_accept(3), SSL_get_error(3), ../05-ssl/tls_export.h,
 * RFC 8446.
 */
#define _GNU_SOURCE
#include "../05-ssl/tls_export.h"
#include "../common/util.h"
#include "server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

struct hs { /* --tls: a connection whose handshake the dispatcher is running */
	SSL *ssl;
	struct tlsx_capture *cap;
	struct pend p;
	long long deadline;
	uint64_t seq; /* the order handshakes started in: the oldest goes first */
	uint32_t mask;
};

/* ---- --tls: the handshake before the handoff ---------------------------- */

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
	if (d->q_count >= (unsigned)d->cfg->queue_max) { /* the ready queue is full: 503's place */
		d->c.refused++;
		hs_free(d, h, 1);
		return;
	}
	struct pend p = h->p;
	h->p.state = NULL; /* it moves to the queue with the descriptor */
	hs_free(d, h, 0);  /* out of our epoll set before anyone else reads it */
	p.id = ++d->next_id;
	q_push_back(d, p);
}

/* One step of a handshake: when the socket is ready, or right after accept. */
void hs_step(struct disp *d, struct hs *h)
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

/* Handshakes in flight have their own bound (--handshakes-max), apart from
 * the queue of connections ready for a worker: when it is reached, the
 * oldest handshake - the likeliest to be a client that says nothing - is
 * closed to make room. A flood of silent connections then costs each of
 * them its slot after the next handshakes-max connections, not everyone
 * else their service until the handshake timeout. */
static void hs_evict_oldest(struct disp *d)
{
	struct hs *old = NULL;
	for (int fd = 0, seen = 0; fd < d->htabcap && seen < d->nhs; fd++)
		if (d->htab[fd]) {
			seen++;
			if (!old || d->htab[fd]->seq < old->seq)
				old = d->htab[fd];
		}
	if (old) {
		d->c.tls_failed++;
		hs_free(d, old, 1);
	}
}

void hs_start(struct disp *d, struct pend p)
{
	if (d->nhs >= d->cfg->handshakes_max)
		hs_evict_oldest(d);
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
	h->seq = ++d->hs_started;
	d->htab[p.fd] = h;
	d->nhs++;
	hs_step(d, h); /* the ClientHello may be there already */
}

/* Handshakes past their deadline are closed and counted. */
void hs_sweep(struct disp *d, int all)
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


/* In a new child: close the handshakes' descriptors and wipe what they
 * captured; the SSL objects are left alone (the child never frees them). */
void hs_forget(struct disp *d)
{
	for (int fd = 0; d->htab && fd < d->htabcap; fd++)
		if (d->htab[fd]) {
			close(fd);
			tlsx_capture_wipe(d->htab[fd]->cap);
		}
}
