/*
 * ssl_handoff.c - stage 05: handing off a TLS connection to another process.
 *
 * The article's third question: what if the socket carries TLS? A descriptor
 * names a kernel socket; the TLS session - keys, record sequence numbers,
 * bytes already decrypted - lives in the user-space SSL object of whoever ran
 * the handshake. Passing the descriptor passes none of it. Three answers:
 *
 *   naive             the parent handshakes, then passes the bare descriptor:
 *                     the worker reads a TLS record header and ciphertext, and
 *                     the client's connection fails;
 *   before-handshake  the parent passes the descriptor before reading a byte;
 *                     the worker runs the handshake itself (always works);
 *   after-handshake   the parent handshakes (OpenSSL) and answers the first
 *                     line, then hands over, with the descriptor and in the
 *                     same message, the TLS 1.3 state of each direction: suite,
 *                     traffic secret, record sequence number, and any plaintext
 *                     OpenSSL had already decrypted. The worker carries on with
 *                     libcrypto alone (worker_record.c). The parent frees its
 *                     SSL object without writing a byte.
 *
 * This file holds the lesson, top to bottom: the worker's side of each mode,
 * then the parent's. The machinery is in the files ssl05.h lists.
 *
 * Protocol: for every line the client sends, one line back:
 * "[<role> <pid>] <THE LINE IN UPPER CASE>". A close_notify is answered.
 *
 * Run it:    ./ssl_handoff                           narrated demo, all three modes
 *            ./ssl_handoff --mode after-handshake --mermaid
 *            ./ssl_handoff --serve --mode after-handshake [--port N]
 *            openssl s_client -tls1_3 -connect 127.0.0.1:PORT
 *            ./ssl_handoff --selftest                RFC 8448 known answers
 * Break it:  --mode naive; --bad-seq (hand over a write sequence number one
 *            too low: nonce reuse, the client fails); --read-ahead (OpenSSL
 *            buffers raw bytes it cannot export: the handoff fails closed).
 *
 * Article: question 3, "what if it is an SSL socket?". Its diagram is lost;
 * nobody knows what it showed. The --mermaid output of each mode is this
 * repository's answer to what it must have shown.
 * See also: SSL_CTX_set_keylog_callback(3), SSL_CTX_set_msg_callback(3),
 * SSL_CTX_set_num_tickets(3), SSL_pending(3), SSL_set_quiet_shutdown(3),
 * unix(7) SOCK_SEQPACKET, RFC 8446, and the files record.h, handoff_state.h,
 * tls_export.h, ktls.h next to this one.
 */
#define _GNU_SOURCE
#include "../common/escape.h"
#include "ssl05.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

/* ---- the worker --------------------------------------------------------- */

/* naive: the worker has a descriptor and no session. It reads one record,
 * which it cannot open, and answers in plaintext. conn stays the caller's. */
void worker_naive(const struct nar *n, const struct opts *o, int conn)
{
	say(n, "I have fd %d: the same TCP connection, but none of the TLS session "
	       "(keys, sequence numbers) - that stayed in the parent's SSL object", conn);
	go(o);
	uint8_t hdr[REC_HEADER];
	ssize_t r = read_exact(conn, hdr, sizeof hdr, IDLE_MS);
	if (r != (ssize_t)sizeof hdr) {
		say(n, "the client sent no record");
		return;
	}
	size_t len = (size_t)hdr[3] << 8 | hdr[4];
	say(n, "read 5 bytes: %02x %02x %02x %02x %02x - a TLS record header: type %d "
	       "(application_data), version 0x%02x%02x, %zu bytes of ciphertext follow",
	    hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[0], hdr[1], hdr[2], len);
	ev(n, "ciphertext", NULL, "type=%d version=0x%02x%02x length=%zu", hdr[0], hdr[1], hdr[2], len);
	uint8_t body[REC_MAX_CIPHER];
	if (len <= sizeof body && read_exact(conn, body, len, IDLE_MS) == (ssize_t)len)
		say(n, "the %zu bytes after it start %02x %02x %02x %02x...: noise without the keys",
		    len, body[0], body[1], body[2], body[3]);
	char reply[128];
	int w = snprintf(reply, sizeof reply, "[%s %d] I CANNOT READ YOUR TLS RECORDS\n", n->role,
			 (int)getpid());
	say(n, "all I can do is answer in plaintext, which the client's TLS must reject");
	ev(n, "plaintext", "client", NULL);
	write_all(conn, reply, (size_t)w);
}

/* before-handshake: the worker runs the whole TLS session itself on conn,
 * which stays the caller's (SSL_free does not close it). */
void worker_before(const struct nar *n, const struct opts *o, SSL_CTX *ctx, int conn)
{
	char why[128];
	SSL *ssl = SSL_new(ctx);
	if (!ssl || !SSL_set_fd(ssl, conn)) {
		say(n, "SSL_new failed");
		SSL_free(ssl);
		return;
	}
	say(n, "fd %d arrived before any TLS byte was read: I run the handshake myself", conn);
	/* lesson: before_handshake_worker */
	if (SSL_accept(ssl) != 1) { /* the whole handshake, here, from the first byte */
		say(n, "handshake failed: %s", ssl_reason(why, sizeof why));
		ev(n, "handshake_failed", NULL, "reason=%s", why);
		SSL_free(ssl);
		return;
	}
	/* end lesson */
	const char *suite = SSL_CIPHER_get_name(SSL_get_current_cipher(ssl));
	say(n, "SSL_accept() done: %s %s; the session is mine from the start", SSL_get_version(ssl), suite);
	ev(n, "handshake", NULL, "suite=%s", suite);
	struct lines *l = calloc(1, sizeof *l);
	if (l)
		ssl_serve_lines_blocking(n, o, ssl, l);
	free(l);
	SSL_free(ssl);
}

/* after-handshake: takes over the session st describes on conn (st is
 * wiped; conn stays the caller's) and serves it without OpenSSL's SSL. */
void take_over(const struct nar *n, const struct opts *o, int conn, struct handoff_state *st)
{
	struct tls13 *t = calloc(1, sizeof *t);
	if (!t) {
		hs_wipe(st);
		return;
	}
	t->n = n;
	t->o = o;
	t->conn = conn;
	const char *suite = rec_suite_name(st->suite);
	uint64_t rd_seq = st->rd.seq, wr_seq = st->wr.seq;
	size_t pending = st->pending_len;
	/* lesson: take_over */
	/* What the parent had decrypted and not yet answered comes first. The
	 * message says how much; the buffer it lands in says how much may. */
	if (st->pending_len > sizeof t->l.buf) {
		say(n, "the state carries %zu bytes of plaintext, my buffer holds %zu: "
		       "closing fd %d", st->pending_len, sizeof t->l.buf, conn);
		ev(n, "bad_state", NULL, "pending=%zu cap=%zu", st->pending_len, sizeof t->l.buf);
		hs_wipe(st);
		goto out;
	}
	memcpy(t->l.buf, st->pending, st->pending_len);
	t->l.len = st->pending_len;
	/* The keys, derived from the traffic secrets; tlsx_sess_init wipes st,
	 * so the secrets live on only inside t->sess. */
	if (tlsx_sess_init(&t->sess, st, o->rekey_after) < 0) {
		say(n, "cannot set up the record layer: %s", strerror(errno));
		goto out;
	}
	/* end lesson */
	say(n, "took over the TLS 1.3 session on fd %d: %s, next record to read #%" PRIu64
	       ", next to write #%" PRIu64 ", %zu bytes the parent had already decrypted",
	    conn, suite, rd_seq, wr_seq, pending);
	ev(n, "resume", NULL, "read_seq=%" PRIu64 " write_seq=%" PRIu64 " pending=%zu", rd_seq, wr_seq,
	   pending);
	if (!(o->ktls_ok && worker_ktls(t)))
		worker_record_loop(t); /* records in, replies out, until the end */
out:
	tlsx_sess_free(&t->sess);
	OPENSSL_cleanse(t, sizeof *t);
	free(t);
}

/* ---- the parent --------------------------------------------------------- */

/*
 * Runs the handshake on pc->fd and reads the client's first line into
 * pc->line. Resumable: while the socket has nothing more to read it returns
 * 0, and the next call goes on where OpenSSL stopped. 1 once the line is
 * there; -1 when the handshake failed (said and traced), -2 when the client
 * closed or failed before a whole line. pc keeps its fd and SSL either way.
 */
static int handshake_and_first_line(const struct nar *n, const struct opts *o, struct pconn *pc,
				    int line_too)
{
	char why[128];
	/* lesson: handshake_and_first_line */
	if (!SSL_is_init_finished(pc->ssl)) {
		int r = SSL_accept(pc->ssl); /* the callbacks record secrets and records */
		if (r != 1 && SSL_get_error(pc->ssl, r) == SSL_ERROR_WANT_READ)
			return 0;
		if (r != 1) {
			say(n, "handshake failed: %s", ssl_reason(why, sizeof why));
			ev(n, "handshake_failed", NULL, "reason=%s", why);
			return -1;
		}
		const char *suite = SSL_CIPHER_get_name(SSL_get_current_cipher(pc->ssl));
		int tickets = pc->c->tickets;
		say(n, "SSL_accept() done on fd %d: %s %s; %d session ticket%s already written "
		       "under the new key", pc->fd, SSL_get_version(pc->ssl), suite, tickets,
		    tickets == 1 ? "" : "s");
		ev(n, "handshake", NULL, "suite=%s tickets=%d", suite, tickets);
		if (!line_too)
			return 1;
		go(o); /* demo: the client's turn */
	}
	/* The first line, as a dispatcher that looks at the request before
	 * choosing a worker would. */
	struct lines *l = pc->l;
	while ((pc->line_len = next_line(l, pc->line)) == 0) {
		int got = SSL_read(pc->ssl, l->buf + l->len, (int)(sizeof l->buf - l->len));
		if (got <= 0)
			return SSL_get_error(pc->ssl, got) == SSL_ERROR_WANT_READ ? 0 : -2;
		l->len += (size_t)got;
	}
	return 1;
	/* end lesson */
}

/*
 * Answers pc's first line, exports the session and sends worker w the
 * descriptor and the state in one message; frees pc->ssl without a byte on
 * the wire and closes pc->fd. When the state cannot be exported exactly it
 * refuses (fails closed): returns -1 with pc untouched, for the caller to
 * serve. 0 when the connection is gone (handed over, or closed on error).
 */
static int export_and_hand_over(const struct nar *n, const struct opts *o, struct pool *p,
				struct pconn *pc, int w)
{
	char why[128], reply[LINE_CAP + 64], shown[ESCAPED_CAP(200)];
	SSL *ssl = pc->ssl;
	struct lines *l = pc->l;
	size_t r = make_reply(reply, sizeof reply, n->role, pc->line, pc->line_len);
	/* The client chose those bytes: escaped, an ESC cannot reach the terminal. */
	say(n, "read the first line myself and answered it: \"%s\"",
	    escape_bytes(shown, sizeof shown, reply, r - 1, 0));
	ev(n, "reply", "client", "line=%zu", pc->line_len);
	if (SSL_write(ssl, reply, (int)r) <= 0) {
		say(n, "SSL_write: %s", ssl_reason(why, sizeof why));
		return 0;
	}
	/* lesson: export_and_hand_over */
	/* Plaintext OpenSSL has decrypted and not yet given us travels too. */
	while (SSL_pending(ssl) > 0 && l->len < sizeof l->buf) {
		int got = SSL_read(ssl, l->buf + l->len, (int)(sizeof l->buf - l->len));
		if (got <= 0)
			break;
		l->len += (size_t)got;
	}
	const char *code = "no_worker";
	const char *refuse = w < 0 ? "no worker is alive" : tlsx_cannot_export(ssl, pc->c, &code);
	if (!refuse && SSL_pending(ssl) > 0) {
		refuse = "more decrypted plaintext than the state message carries";
		code = "pending";
	}
	if (refuse) {
		/* Fail closed: an inexact state would corrupt or endanger the session,
		 * so this connection stays with the process that has the real one. */
		say(n, "refusing the handoff: %s. I keep serving this connection myself", refuse);
		ev(n, "refuse", NULL, "why=%s", code);
		return -1;
	}
	struct handoff_state st;
	tlsx_export(ssl, pc->c, &st); /* suite, secrets, next sequence numbers */
	/* end lesson */
	uint16_t suite = st.suite;
	if (o->bad_seq && st.wr.seq > 0) {
		st.wr.seq--;
		say(n, "--bad-seq: handing over write sequence %" PRIu64 " instead of %" PRIu64
		       " - the worker will reuse a nonce under the same key", st.wr.seq, pc->c->wr_records);
	}
	st.pending_len = l->len;
	memcpy(st.pending, l->buf, l->len);
	int tickets = pc->c->tickets;
	uint64_t written = pc->c->wr_records, got = pc->c->rd_records;
	OPENSSL_cleanse(l, sizeof *l);
	tlsx_capture_wipe(pc->c);
	uint8_t msg[1 + HS_MAX_ENCODED];
	size_t enc;
	msg[0] = MSG_AFTER;
	if (hs_encode(&st, msg + 1, HS_MAX_ENCODED, &enc) < 0) {
		say(n, "hs_encode: %s: keeping the connection", strerror(errno));
		hs_wipe(&st);
		return 0; /* the state is gone: close rather than guess */
	}
	say(n, "exporting the session: %s; next record to read #%" PRIu64 " (I read %" PRIu64
	       "), next to write #%" PRIu64 " (I wrote %" PRIu64 ": %d ticket%s and my reply); "
	       "%zu bytes of decrypted plaintext; the secrets go into the message, never on screen",
	    rec_suite_name(suite), st.rd.seq, got, st.wr.seq, written, tickets,
	    tickets == 1 ? "" : "s", st.pending_len);
	ev(n, "export", NULL, "read_seq=%" PRIu64 " write_seq=%" PRIu64 " pending=%zu", st.rd.seq,
	   st.wr.seq, st.pending_len);
	hs_wipe(&st);
	/* lesson: quiet_free_and_send */
	/* Free without a byte on the wire: SSL_shutdown would send close_notify
	 * under a sequence number the worker is about to use. */
	say(n, "SSL_set_quiet_shutdown(1) + SSL_free(): my SSL object goes, writing nothing");
	ev(n, "quiet_free", NULL, NULL);
	SSL_set_quiet_shutdown(ssl, 1);
	SSL_free(ssl);
	pc->ssl = NULL;
	say(n, "sendmsg(): fd %d and %zu bytes of state in ONE SOCK_SEQPACKET message "
	       "to worker %d; then close(fd %d)", pc->fd, enc, w, pc->fd);
	ev(n, "handoff", "worker", "fd=%d state_bytes=%zu", pc->fd, enc);
	hand_over(n, p, w, pc->fd, msg, 1 + enc); /* closes our copy of the fd */
	/* end lesson */
	pc->fd = -1;
	OPENSSL_cleanse(msg, 1 + enc);
	return 0;
}

/*
 * Moves pc on as far as its socket allows. STEP_WAIT: call again when pc->fd
 * is ready. STEP_DONE: the connection is handed over or was closed on an
 * error; free pc. STEP_SERVE: the parent keeps it (a refused handoff, or a
 * client that closed before a whole line, whose close is to be answered).
 */
int parent_step(const struct nar *n, const struct opts *o, struct pool *p, struct pconn *pc)
{
	int rc = handshake_and_first_line(n, o, pc, o->mode != MODE_NAIVE);
	if (rc == 0)
		return STEP_WAIT;
	if (rc < 0)
		return rc == -2 ? STEP_SERVE : STEP_DONE;
	/* O_NONBLOCK belongs to the open file description, which the worker
	 * shares: it gets the socket back in the blocking mode it expects. */
	set_nonblocking(pc->fd, 0);
	int w = pick_worker(p);
	if (o->mode != MODE_NAIVE)
		return export_and_hand_over(n, o, p, pc, w) < 0 ? STEP_SERVE : STEP_DONE;
	/* lesson: naive_hand_off */
	say(n, "naive handoff: passing fd %d to the worker and freeing my SSL object - "
	       "and with it the keys and sequence numbers", pc->fd);
	ev(n, "handoff", "worker", "fd=%d state=none", pc->fd);
	SSL_set_quiet_shutdown(pc->ssl, 1); /* free without a close_notify */
	SSL_free(pc->ssl);
	pc->ssl = NULL;
	uint8_t m = MSG_NAIVE;
	if (w >= 0)
		hand_over(n, p, w, pc->fd, &m, 1); /* the bare descriptor; closes our copy */
	/* end lesson */
	if (w >= 0)
		pc->fd = -1;
	return STEP_DONE;
}

/* before-handshake: conn goes to worker w (or is closed when w < 0) before a
 * byte of it is read; our copy is closed either way. */
void hand_off_before(const struct nar *n, struct pool *p, int w, int conn)
{
	/* lesson: before_hand_off */
	say(n, "before-handshake: passing fd %d before reading a byte of it", conn);
	ev(n, "handoff", "worker", "fd=%d state=none", conn);
	uint8_t m = MSG_BEFORE;
	if (w < 0)
		close(conn);
	else
		hand_over(n, p, w, conn, &m, 1);
	/* end lesson */
}
