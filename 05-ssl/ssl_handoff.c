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
 *                     libcrypto alone (record.c). The parent frees its SSL
 *                     object without writing a byte.
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
 * Article: question 3, "what if it is an SSL socket?" (its diagram is lost;
 * the --mermaid output of each mode restores it).
 * See also: SSL_CTX_set_keylog_callback(3), SSL_CTX_set_msg_callback(3),
 * SSL_CTX_set_num_tickets(3), SSL_pending(3), SSL_set_quiet_shutdown(3),
 * unix(7) SOCK_SEQPACKET, RFC 8446, and the files record.h, handoff_state.h,
 * ktls.h next to this one.
 */
#define _GNU_SOURCE
#include "../03-scm-rights/fdpass.h"
#include "../common/cli.h"
#include "../common/narrate.h"
#include "../common/util.h"
#include "handoff_state.h"
#include "ktls.h"
#include "record.h"
#include "tls_export.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define MAX_WORKERS 16
#define LINE_CAP REC_MAX_PLAIN
#define IDLE_MS (WAIT_MS * 3) /* a silent client is dropped after this */

enum mode { MODE_NAIVE, MODE_BEFORE, MODE_AFTER, MODE_ALL };
static const char *const mode_names[] = { "naive", "before-handshake", "after-handshake", NULL };
enum { KTLS_AUTO, KTLS_OFF, KTLS_FORCE };
static const char *const ktls_names[] = { "auto", "off", "force", NULL };

/* Messages on the parent <-> worker channel (one SOCK_SEQPACKET message each). */
enum { MSG_NAIVE = 'N', MSG_BEFORE = 'B', MSG_AFTER = 'A', MSG_DONE = 'D' };

struct opts {
	int mode;
	int workers;
	int ktls;
	int ktls_ok;            /* the kernel offers the tls ULP (checked at start) */
	char ulps[256];         /* what it offers instead (for the message) */
	const char *suites;     /* --ciphersuites */
	int tickets;
	const char *cert, *key;
	int bad_seq;
	int read_ahead;
	uint64_t rekey_after;   /* 0: the AEAD limit of the suite */
	int go_fd;              /* demo only: tells the client "your turn" (-1 otherwise) */
};

static const char usage[] =
	"usage: ssl_handoff [--mode MODE] [options] [--trace FILE] [--mermaid]\n"
	"       ssl_handoff --serve [--port N] [--mode MODE] [options]\n"
	"       ssl_handoff --selftest\n"
	"Stage 05: handing off a TLS connection to a pre-forked worker.\n"
	"  --mode MODE          naive | before-handshake | after-handshake\n"
	"                       (demo default: all three; --serve default: after-handshake)\n"
	"  --workers N          pre-forked workers, 1..16 (default 2)\n"
	"  --ktls MODE          auto | off | force: kernel TLS for handed-off sessions\n"
	"  --ciphersuites LIST  TLS 1.3 suites, OpenSSL syntax (TLS_AES_128_GCM_SHA256:...)\n"
	"  --tickets N          session tickets the server sends, 0..10 (default 2)\n"
	"  --cert FILE --key FILE  PEM certificate and key (default: self-signed, made in memory)\n"
	"  --rekey-after N      the worker sends its own KeyUpdate after N records under one key\n"
	"                       (default: the suite's AEAD limit)\n"
	"  --bad-seq            break it: hand over a write sequence number one too low\n"
	"  --read-ahead         break it: let OpenSSL read ahead, so the handoff must fail closed\n"
	"  --selftest           known-answer tests (RFC 8448 section 3) and exit\n" COMMON_USAGE;

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */
/* ------------------------------------------------------------------ */

/* "your turn" to the demo's client: the server side has recorded its events. */
static void go(const struct opts *o)
{
	if (o->go_fd >= 0)
		(void)!write(o->go_fd, "g", 1);
}

/* An OpenSSL failure in main's own setup: the call and OpenSSL's reason, exit 1. */
static _Noreturn void die_ssl(const char *what)
{
	int saved = errno;
	unsigned long e = ERR_get_error();
	const char *reason = e ? ERR_reason_error_string(e) : NULL;
	if (!reason) /* a system error inside OpenSSL (a file that is not there...) */
		reason = e && ERR_SYSTEM_ERROR(e) ? strerror(ERR_GET_REASON(e)) : saved ? strerror(saved) : "failed";
	fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what, reason);
	exit(EXIT_RUNTIME);
}

/* OpenSSL's reason for the last failure, with spaces made '_' for the trace. */
static const char *ssl_reason(char *buf, size_t cap)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;
	snprintf(buf, cap, "%s", r ? r : (errno ? strerror(errno) : "connection closed"));
	ERR_clear_error();
	for (char *p = buf; *p; p++)
		if (*p == ' ')
			*p = '_';
	return buf;
}

/* Bounds every blocking read and write on a connection. */
static void set_timeouts(int fd, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Reads exactly len bytes, each read bounded by ms. Returns len, or fewer
 * when the peer closed (0 = closed before the first byte), or -1/errno. */
static ssize_t read_exact(int fd, uint8_t *buf, size_t len, int ms)
{
	size_t got = 0;
	while (got < len) {
		ssize_t r = read_within(fd, buf + got, len - got, ms);
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* The reply to one line: "[role pid] LINE\n", the line upper-cased. */
static size_t make_reply(char *out, size_t cap, const char *role, const char *line, size_t len)
{
	int w = snprintf(out, cap, "[%s %d] ", role, (int)getpid());
	size_t n = w > 0 ? (size_t)w : 0;
	for (size_t i = 0; i < len && n + 2 < cap; i++)
		if (line[i] != '\n' && line[i] != '\r')
			out[n++] = (char)toupper((unsigned char)line[i]);
	out[n++] = '\n';
	return n;
}

/* A line buffer: bytes in, whole lines out. A line longer than the buffer
 * is answered in pieces rather than refused. */
struct lines {
	char buf[LINE_CAP];
	size_t len;
};

/* The next complete line (or a full buffer) into out; 0 if none yet. */
static size_t next_line(struct lines *l, char *out)
{
	char *nl = memchr(l->buf, '\n', l->len);
	size_t n = nl ? (size_t)(nl - l->buf) + 1 : (l->len == sizeof l->buf ? l->len : 0);
	if (n) {
		memcpy(out, l->buf, n);
		memmove(l->buf, l->buf + n, l->len - n);
		l->len -= n;
	}
	return n;
}

/* ------------------------------------------------------------------ */
/* The server's TLS context: a certificate made in memory               */
/* ------------------------------------------------------------------ */

/* The certificate, the capture of secrets and sequence numbers and the
 * checks before export live in tls_export.c (stage 06 uses them too). */
static void make_identity(EVP_PKEY **pkey, X509 **cert)
{
	if (tlsx_make_identity(pkey, cert) < 0)
		die_ssl("building the self-signed certificate");
}

static SSL_CTX *server_ctx(const struct opts *o, EVP_PKEY *pkey, X509 *cert)
{
	const struct tlsx_ctx_opts co = { .suites = o->suites, .tickets = o->tickets,
					  .read_ahead = o->read_ahead, .cert_file = o->cert,
					  .key_file = o->key };
	const char *failed = NULL;
	SSL_CTX *ctx = tlsx_server_ctx(&co, pkey, cert, &failed);
	if (!ctx && strcmp(failed, "SSL_CTX_set_ciphersuites") == 0)
		usage_error("--ciphersuites: OpenSSL accepts none of '%s'", o->suites);
	if (!ctx)
		die_ssl(failed);
	return ctx;
}

/* ------------------------------------------------------------------ */
/* Serving lines through an SSL object (before-handshake worker, and    */
/* the parent when it refuses a handoff)                               */
/* ------------------------------------------------------------------ */

static void ssl_serve_lines(const struct nar *n, const struct opts *o, SSL *ssl, struct lines *l)
{
	char line[LINE_CAP + 1], reply[LINE_CAP + 64], why[128];
	for (;;) {
		size_t len;
		while ((len = next_line(l, line)) > 0) {
			size_t r = make_reply(reply, sizeof reply, n->role, line, len);
			ev(n, "reply", "client", "line=%zu", len);
			if (SSL_write(ssl, reply, (int)r) <= 0) {
				say(n, "SSL_write failed: %s", ssl_reason(why, sizeof why));
				return;
			}
		}
		go(o);
		int got = SSL_read(ssl, l->buf + l->len, (int)(sizeof l->buf - l->len));
		if (got > 0) {
			l->len += (size_t)got;
			continue;
		}
		if (SSL_get_error(ssl, got) == SSL_ERROR_ZERO_RETURN) {
			say(n, "the client sent close_notify; answering with mine");
			ev(n, "close_notify", "client", NULL);
			SSL_shutdown(ssl);
		} else {
			say(n, "the connection ended: %s", ssl_reason(why, sizeof why));
			ev(n, "ended", NULL, "reason=%s", why);
		}
		return;
	}
}

/* ------------------------------------------------------------------ */
/* The worker                                                           */
/* ------------------------------------------------------------------ */

/* naive: the worker has a descriptor and no session. */
static void worker_naive(const struct nar *n, const struct opts *o, int conn)
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

/* before-handshake: the worker runs the whole TLS session itself. */
static void worker_before(const struct nar *n, const struct opts *o, SSL_CTX *ctx, int conn)
{
	char why[128];
	SSL *ssl = SSL_new(ctx);
	if (!ssl || !SSL_set_fd(ssl, conn)) {
		say(n, "SSL_new failed");
		SSL_free(ssl);
		return;
	}
	say(n, "fd %d arrived before any TLS byte was read: I run the handshake myself", conn);
	if (SSL_accept(ssl) != 1) {
		say(n, "handshake failed: %s", ssl_reason(why, sizeof why));
		ev(n, "handshake_failed", NULL, "reason=%s", why);
		SSL_free(ssl);
		return;
	}
	const char *suite = SSL_CIPHER_get_name(SSL_get_current_cipher(ssl));
	say(n, "SSL_accept() done: %s %s; the session is mine from the start", SSL_get_version(ssl), suite);
	ev(n, "handshake", NULL, "suite=%s", suite);
	struct lines *l = calloc(1, sizeof *l);
	if (l)
		ssl_serve_lines(n, o, ssl, l);
	free(l);
	SSL_free(ssl);
}

/* after-handshake: the session arrives as state; libcrypto carries it on. */
struct tls13 {
	const struct nar *n;
	const struct opts *o;
	int conn;
	struct tlsx_sess sess; /* both directions' keys and sequence numbers (tls_export.h) */
	uint8_t rec[REC_HEADER + REC_MAX_CIPHER]; /* a record read, opened in place */
	uint8_t out[REC_HEADER + REC_MAX_CIPHER]; /* a record sealed: never rec, whose
						     plaintext may still be in use */
	struct lines l;
};

/* Seals and writes one record of the given inner type. -1/errno. */
static int send_record(struct tls13 *t, uint8_t type, const void *data, size_t len)
{
	size_t out_len;
	if (rec_seal(&t->sess.wr, type, data, len, 0, t->out, sizeof t->out, &out_len) < 0)
		return -1;
	return write_all(t->conn, t->out, out_len);
}

static int send_alert(struct tls13 *t, int alert)
{
	size_t out_len;
	if (tlsx_seal_alert(&t->sess, alert, t->out, sizeof t->out, &out_len) < 0)
		return -1;
	return write_all(t->conn, t->out, out_len);
}

/* Our own KeyUpdate (update_not_requested), then the new write key. */
static int send_key_update(struct tls13 *t, const char *why)
{
	size_t out_len;
	ev(t->n, "key_update", "client", "why=%s", why);
	if (tlsx_seal_key_update(&t->sess, t->out, sizeof t->out, &out_len) < 0)
		return -1;
	return write_all(t->conn, t->out, out_len);
}

/* Application data out, in records of at most 2^14 bytes, with a KeyUpdate
 * first whenever the write key has protected all it may. */
static int send_data(struct tls13 *t, const char *data, size_t len)
{
	while (len > 0) {
		if (t->sess.wr.seq + 1 >= t->sess.limit) {
			say(t->n, "my write key has protected %" PRIu64 " records, its limit is %" PRIu64
				  ": KeyUpdate before the next one", t->sess.wr.seq, t->sess.limit);
			if (send_key_update(t, "limit") < 0)
				return -1;
		}
		size_t chunk = len < REC_MAX_PLAIN ? len : REC_MAX_PLAIN;
		if (send_record(t, CT_APPLICATION_DATA, data, chunk) < 0)
			return -1;
		data += chunk;
		len -= chunk;
	}
	return 0;
}

static int answer_lines(struct tls13 *t)
{
	char line[LINE_CAP + 1], reply[LINE_CAP + 64];
	size_t len;
	while ((len = next_line(&t->l, line)) > 0) {
		size_t r = make_reply(reply, sizeof reply, t->n->role, line, len);
		ev(t->n, "reply", "client", "line=%zu", len);
		if (send_data(t, reply, r) < 0)
			return -1;
	}
	return 0;
}

/*
 * One record in: 1 to keep going, 0 when the connection is over (close_notify
 * answered, the client gone), or an alert to send (> 0 is the description +
 * 1000, to tell it from the other two).
 */
enum { GO_ON = 1, OVER = 0, ALERT_BASE = 1000 };

static int one_record(struct tls13 *t)
{
	const struct nar *n = t->n;
	ssize_t r = read_exact(t->conn, t->rec, REC_HEADER, IDLE_MS);
	if (r == 0) {
		say(n, "the client closed TCP without a close_notify");
		return OVER;
	}
	if (r < 0) {
		say(n, "reading a record header: %s", strerror(errno));
		return OVER;
	}
	size_t body;
	int alert = r < REC_HEADER ? ALERT_DECODE_ERROR : rec_check_header(t->rec, &body);
	if (alert == 0) {
		r = read_exact(t->conn, t->rec + REC_HEADER, body, IDLE_MS);
		if (r != (ssize_t)body) {
			say(n, "the record was cut short: %zd of %zu bytes", r, body);
			alert = ALERT_DECODE_ERROR;
		}
	} else if (r == REC_HEADER) {
		say(n, "bad record header %02x %02x %02x %02x %02x", t->rec[0], t->rec[1], t->rec[2],
		    t->rec[3], t->rec[4]);
	}
	uint8_t *plain = NULL;
	size_t len = 0;
	int event = 0, request = -1;
	if (alert == 0)
		alert = tlsx_open_record(&t->sess, t->rec, REC_HEADER + body, &plain, &len, &event, &request);
	if (alert)
		return ALERT_BASE + alert;

	switch (event) {
	case 0: { /* application data */
		/* A record (up to 2^14 bytes) may land on a partial line: take it in
		 * as much as fits at a time; answer_lines() always leaves room (a
		 * full buffer without a newline is answered as one line). */
		size_t off = 0;
		while (off < len) {
			size_t room = sizeof t->l.buf - t->l.len;
			size_t k = len - off < room ? len - off : room;
			memcpy(t->l.buf + t->l.len, plain + off, k);
			t->l.len += k;
			off += k;
			if (answer_lines(t) < 0) {
				OPENSSL_cleanse(plain, len);
				return OVER;
			}
		}
		OPENSSL_cleanse(plain, len);
		return GO_ON;
	}
	case TLSX_CLOSE_NOTIFY:
		say(n, "the client sent close_notify; answering with mine, from my own record layer");
		ev(n, "close_notify", "client", NULL);
		send_alert(t, ALERT_CLOSE_NOTIFY);
		return OVER;
	case TLSX_PEER_ALERT:
		say(n, "the client sent alert %d (%s): the connection is over", t->sess.alert,
		    rec_alert_name(t->sess.alert));
		ev(n, "client_alert", NULL, "alert=%d", t->sess.alert);
		return OVER;
	default: /* TLSX_KEY_UPDATE: the read key has moved on already */
		say(n, "KeyUpdate from the client (%s): my read key moves to the next traffic secret",
		    request ? "update_requested" : "update_not_requested");
		ev(n, "peer_key_update", NULL, "requested=%d", request);
		/* update_requested: answer with our own KeyUpdate before any more data */
		if (request && send_key_update(t, "requested") < 0)
			return OVER;
		return GO_ON;
	}
}

static void worker_after(const struct nar *n, const struct opts *o, int conn,
			 struct handoff_state *st)
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
	memcpy(t->l.buf, st->pending, st->pending_len);
	t->l.len = st->pending_len;
	uint64_t rd_seq = st->rd.seq, wr_seq = st->wr.seq;
	size_t pending = st->pending_len;
	/* tlsx_sess_init wipes st: the secrets live on only inside t->sess */
	if (tlsx_sess_init(&t->sess, st, o->rekey_after) < 0) {
		say(n, "cannot set up the record layer: %s", strerror(errno));
		goto out;
	}
	say(n, "took over the TLS 1.3 session on fd %d: %s, next record to read #%" PRIu64
	       ", next to write #%" PRIu64 ", %zu bytes the parent had already decrypted",
	    conn, suite, rd_seq, wr_seq, pending);
	ev(n, "resume", NULL, "suite=%s read_seq=%" PRIu64 " write_seq=%" PRIu64 " pending=%zu", suite,
	   rd_seq, wr_seq, pending);

	if (o->ktls_ok) {
		if (ktls_install(conn, &t->sess.rd, &t->sess.wr) == 0) {
			/* UNTESTED here (no tls module on this kernel): from now on plain
			 * read/write; control records would need recvmsg cmsgs. */
			say(n, "kernel TLS installed: the kernel now holds the session");
			ev(n, "ktls", NULL, "installed=1");
			char buf[LINE_CAP], reply[LINE_CAP + 64];
			size_t k;
			while ((k = next_line(&t->l, buf)) > 0) { /* what the parent had decrypted */
				size_t m = make_reply(reply, sizeof reply, n->role, buf, k);
				if (write_all(conn, reply, m) < 0)
					goto out;
			}
			ssize_t r;
			while ((r = read_within(conn, buf, sizeof buf, IDLE_MS)) > 0) {
				k = make_reply(reply, sizeof reply, n->role, buf, (size_t)r);
				if (write_all(conn, reply, k) < 0)
					break;
			}
			goto out;
		}
		say(n, "kernel TLS install failed (%s): using my own record layer", strerror(errno));
	}

	int rc = answer_lines(t) < 0 ? OVER : GO_ON;
	while (rc == GO_ON) {
		go(o);
		rc = one_record(t);
	}
	if (rc >= ALERT_BASE) {
		int alert = rc - ALERT_BASE;
		say(n, "fatal: sending a %s alert and closing", rec_alert_name(alert));
		ev(n, "alert", "client", "alert=%s", rec_alert_name(alert));
		send_alert(t, alert);
	}
out:
	tlsx_sess_free(&t->sess);
	OPENSSL_cleanse(t, sizeof *t);
	free(t);
}

static void worker_main(struct nar *n, const struct opts *o, SSL_CTX *ctx, int chan)
{
	uint8_t *msg = malloc(1 + HS_MAX_ENCODED + 1);
	struct handoff_state *st = malloc(sizeof *st);
	if (!msg || !st)
		_exit(EXIT_RUNTIME);
	for (;;) {
		int fd = -1;
		struct fdpass_rx rx = { .buf = msg, .cap = 1 + HS_MAX_ENCODED + 1, .fds = &fd, .max_fds = 1,
					.flags = FDPASS_NEED_FD };
		int s = fdpass_recv(chan, &rx);
		if (s == FDPASS_EOF)
			break; /* the parent is done with us */
		if (s != FDPASS_OK) {
			say(n, "a bad message from the parent: %s", fdpass_strerror(s));
			if (s == FDPASS_ESYS && errno != EINTR)
				break;
			continue;
		}
		set_timeouts(fd, IDLE_MS);
		ev(n, "received", NULL, "fd=%d kind=%c", fd, rx.len ? msg[0] : '?');
		if (rx.len == 1 && msg[0] == MSG_NAIVE) {
			worker_naive(n, o, fd);
		} else if (rx.len == 1 && msg[0] == MSG_BEFORE) {
			worker_before(n, o, ctx, fd);
		} else if (rx.len > 1 && msg[0] == MSG_AFTER && hs_decode(st, msg + 1, rx.len - 1) == 0) {
			OPENSSL_cleanse(msg, rx.len);
			worker_after(n, o, fd, st);
		} else {
			say(n, "a message I cannot decode (%zu bytes): closing fd %d", rx.len, fd);
		}
		OPENSSL_cleanse(msg, rx.len);
		close(fd);
		uint8_t done = MSG_DONE;
		if (send(chan, &done, 1, MSG_NOSIGNAL) < 0)
			break;
	}
	free(st);
	free(msg);
}

/* ------------------------------------------------------------------ */
/* The parent                                                           */
/* ------------------------------------------------------------------ */

struct pool {
	int n;
	pid_t pid[MAX_WORKERS];
	int chan[MAX_WORKERS]; /* our end of each worker's SOCK_SEQPACKET channel */
	int busy[MAX_WORKERS]; /* connections handed over and not yet reported done */
};

static void start_workers(struct nar *n, const struct opts *o, SSL_CTX *ctx, struct pool *p,
			  int lfd, int sfd)
{
	for (int i = 0; i < o->workers; i++) {
		int sv[2];
		/* SEQPACKET: message boundaries kept, so the descriptor and the state
		 * arrive together as one message, never split or merged. */
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
			die("socketpair");
		ev(n, "fork", "worker", "index=%d", i);
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			n->role = "worker";
			for (int k = 0; k < i; k++)
				close(p->chan[k]);
			close(sv[0]);
			close(lfd);
			if (sfd >= 0)
				close(sfd);
			unblock_signals();
			worker_main(n, o, ctx, sv[1]);
			close(sv[1]);
			if (o->go_fd >= 0)
				close(o->go_fd);
			nar_close(n);
			SSL_CTX_free(ctx);
			_exit(0);
		}
		close(sv[1]);
		p->pid[i] = pid;
		p->chan[i] = sv[0];
		p->busy[i] = 0;
		p->n = i + 1;
	}
	say(n, "pre-forked %d worker%s; each has a SOCK_SEQPACKET channel to me", p->n, p->n == 1 ? "" : "s");
}

static void stop_workers(struct pool *p)
{
	for (int i = 0; i < p->n; i++)
		if (p->chan[i] >= 0) {
			close(p->chan[i]); /* EOF: the worker finishes and exits */
			p->chan[i] = -1;
		}
	for (int i = 0; i < p->n; i++)
		if (p->pid[i] > 0 && reap_child(p->pid[i], WAIT_MS, NULL) == 0)
			p->pid[i] = 0;
}

/* The least busy live worker, or -1. */
static int pick_worker(const struct pool *p)
{
	int best = -1;
	for (int i = 0; i < p->n; i++)
		if (p->chan[i] >= 0 && (best < 0 || p->busy[i] < p->busy[best]))
			best = i;
	return best;
}

/* Hands conn to worker w with msg attached; closes our copy either way. */
static int hand_over(const struct nar *n, struct pool *p, int w, int conn, const void *msg, size_t len)
{
	int s = fdpass_send(p->chan[w], msg, len, &conn, 1, NULL);
	if (s != FDPASS_OK)
		say(n, "sendmsg to worker %d: %s", w, fdpass_strerror(s));
	else
		p->busy[w]++;
	close(conn); /* the message in flight holds its own reference */
	return s == FDPASS_OK ? 0 : -1;
}

/* naive and after-handshake: the parent runs the handshake. */
static void parent_tls(struct nar *n, const struct opts *o, SSL_CTX *ctx, struct pool *p, int conn)
{
	char why[128];
	struct tlsx_capture *c = calloc(1, sizeof *c);
	struct lines *l = calloc(1, sizeof *l);
	uint8_t *msg = malloc(1 + HS_MAX_ENCODED);
	struct handoff_state *st = calloc(1, sizeof *st);
	SSL *ssl = SSL_new(ctx);
	if (!c || !l || !msg || !st || !ssl || !SSL_set_fd(ssl, conn)) {
		say(n, "out of memory: closing fd %d", conn);
		close(conn);
		goto out;
	}
	SSL_set_app_data(ssl, c);
	if (SSL_accept(ssl) != 1) {
		say(n, "handshake failed: %s", ssl_reason(why, sizeof why));
		ev(n, "handshake_failed", NULL, "reason=%s", why);
		SSL_free(ssl);
		ssl = NULL;
		close(conn);
		goto out;
	}
	const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
	uint16_t suite = SSL_CIPHER_get_protocol_id(cipher);
	say(n, "SSL_accept() done on fd %d: %s %s; %d session ticket%s already written under the "
	       "new key", conn, SSL_get_version(ssl), SSL_CIPHER_get_name(cipher), c->tickets,
	    c->tickets == 1 ? "" : "s");
	ev(n, "handshake", NULL, "suite=%s tickets=%d", SSL_CIPHER_get_name(cipher), c->tickets);

	int w = pick_worker(p);
	if (o->mode == MODE_NAIVE) {
		say(n, "naive handoff: passing fd %d to the worker and freeing my SSL object - "
		       "and with it the keys and sequence numbers", conn);
		ev(n, "handoff", "worker", "fd=%d state=none", conn);
		SSL_set_quiet_shutdown(ssl, 1); /* free without a close_notify */
		SSL_free(ssl);
		ssl = NULL;
		msg[0] = MSG_NAIVE;
		if (w < 0)
			close(conn);
		else
			hand_over(n, p, w, conn, msg, 1);
		goto out;
	}

	/* after-handshake: read and answer the first line, as a dispatcher that
	 * looks at the request (or the SNI) before choosing a worker would. */
	go(o);
	char line[LINE_CAP + 1], reply[LINE_CAP + 64];
	size_t len = 0;
	while ((len = next_line(l, line)) == 0) {
		int got = SSL_read(ssl, l->buf + l->len, (int)(sizeof l->buf - l->len));
		if (got <= 0)
			break;
		l->len += (size_t)got;
	}
	if (len == 0) { /* closed (or failed) before a whole line */
		ssl_serve_lines(n, o, ssl, l);
		goto free_ssl;
	}
	size_t r = make_reply(reply, sizeof reply, n->role, line, len);
	say(n, "read the first line myself and answered it: \"%.*s\"", (int)r - 1, reply);
	ev(n, "reply", "client", "line=%zu", len);
	if (SSL_write(ssl, reply, (int)r) <= 0) {
		say(n, "SSL_write: %s", ssl_reason(why, sizeof why));
		goto free_ssl;
	}

	/* Plaintext OpenSSL has decrypted and not yet given us travels too. */
	while (SSL_pending(ssl) > 0 && l->len < sizeof l->buf) {
		int got = SSL_read(ssl, l->buf + l->len, (int)(sizeof l->buf - l->len));
		if (got <= 0)
			break;
		l->len += (size_t)got;
	}
	const char *code = "no_worker", *refuse = w < 0 ? "no worker is alive" : tlsx_cannot_export(ssl, c, &code);
	if (!refuse && SSL_pending(ssl) > 0) {
		refuse = "more decrypted plaintext than the state message carries";
		code = "pending";
	}
	if (refuse) {
		/* Fail closed: an inexact state would corrupt or endanger the session,
		 * so this connection stays with the process that has the real one. */
		say(n, "refusing the handoff: %s. I keep serving this connection myself", refuse);
		ev(n, "refuse", NULL, "why=%s", code);
		tlsx_capture_wipe(c);
		ssl_serve_lines(n, o, ssl, l);
		goto free_ssl;
	}

	tlsx_export(ssl, c, st);
	if (o->bad_seq && st->wr.seq > 0) {
		st->wr.seq--;
		say(n, "--bad-seq: handing over write sequence %" PRIu64 " instead of %" PRIu64
		       " - the worker will reuse a nonce under the same key", st->wr.seq, c->wr_records);
	}
	st->pending_len = l->len;
	memcpy(st->pending, l->buf, l->len);
	int tickets = c->tickets;
	OPENSSL_cleanse(l, sizeof *l);
	tlsx_capture_wipe(c);
	size_t enc;
	msg[0] = MSG_AFTER;
	if (hs_encode(st, msg + 1, HS_MAX_ENCODED, &enc) < 0) {
		say(n, "hs_encode: %s: keeping the connection", strerror(errno));
		hs_wipe(st);
		goto free_ssl; /* the state is gone: close rather than guess */
	}
	say(n, "exporting the session: %s, read seq %" PRIu64 ", write seq %" PRIu64
	       " (%d ticket%s and my reply went out under this key), %zu bytes of decrypted "
	       "plaintext; the secrets go into the message, never on screen",
	    rec_suite_name(suite), st->rd.seq, st->wr.seq, tickets, tickets == 1 ? "" : "s",
	    st->pending_len);
	ev(n, "export", NULL, "suite=%s read_seq=%" PRIu64 " write_seq=%" PRIu64 " pending=%zu",
	   rec_suite_name(suite), st->rd.seq, st->wr.seq, st->pending_len);
	hs_wipe(st);
	/* Free without a byte on the wire: SSL_shutdown would send close_notify
	 * under a sequence number the worker is about to use. */
	say(n, "SSL_set_quiet_shutdown(1) + SSL_free(): my SSL object goes without writing anything");
	ev(n, "quiet_free", NULL, NULL);
	SSL_set_quiet_shutdown(ssl, 1);
	SSL_free(ssl);
	ssl = NULL;
	say(n, "sendmsg(): fd %d and %zu bytes of state in ONE SOCK_SEQPACKET message to worker %d; "
	       "then close(fd %d)", conn, enc, w, conn);
	ev(n, "handoff", "worker", "fd=%d state_bytes=%zu", conn, enc);
	hand_over(n, p, w, conn, msg, 1 + enc);
	OPENSSL_cleanse(msg, 1 + enc);
	goto out;

free_ssl:
	SSL_free(ssl);
	ssl = NULL;
	close(conn);
out:
	if (c)
		tlsx_capture_wipe(c);
	if (l)
		OPENSSL_cleanse(l, sizeof *l);
	free(c);
	free(l);
	free(msg);
	free(st);
}

/* One accepted connection, by mode. */
static void parent_handle(struct nar *n, const struct opts *o, SSL_CTX *ctx, struct pool *p, int conn)
{
	set_timeouts(conn, IDLE_MS);
	/* A line protocol of small records: without TCP_NODELAY the second of two
	 * small writes (the two session tickets) waits for a delayed ACK. */
	int one = 1;
	setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (o->mode == MODE_BEFORE) {
		int w = pick_worker(p);
		say(n, "before-handshake: passing fd %d before reading a byte of it", conn);
		ev(n, "handoff", "worker", "fd=%d state=none", conn);
		uint8_t m = MSG_BEFORE;
		if (w < 0)
			close(conn);
		else
			hand_over(n, p, w, conn, &m, 1);
		return;
	}
	parent_tls(n, o, ctx, p, conn);
}

/* Reads 'done' reports from a worker channel; -1 when the worker is gone. */
static int read_done(struct pool *p, int i)
{
	uint8_t b;
	ssize_t r = recv(p->chan[i], &b, 1, MSG_DONTWAIT);
	if (r == 1) {
		if (p->busy[i] > 0)
			p->busy[i]--;
		return 0;
	}
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	close(p->chan[i]);
	p->chan[i] = -1;
	return -1;
}

/* ------------------------------------------------------------------ */
/* The demo's client: OpenSSL, trusting exactly our in-memory certificate */
/* ------------------------------------------------------------------ */

static int wait_go(int go_rd)
{
	char g;
	return read_within(go_rd, &g, 1, WAIT_MS * 3) == 1 ? 0 : -1;
}

/* Exit status: 0 both replies came from the expected roles, 3 the connection
 * failed (what naive mode must show), 1 anything else. */
static int client(struct nar *n, int port, int go_rd, X509 *cert, int mode)
{
	char why[128];
	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
	if (!cctx || !SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION) ||
	    !X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), cert))
		die_ssl("client SSL_CTX");
	SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL); /* the server's self-signed cert, verified */
	ev(n, "connect", "parent", "port=%d", port);
	int fd = connect_loopback(port);
	if (fd < 0)
		die("client: connect");
	set_timeouts(fd, WAIT_MS * 3);
	SSL *ssl = SSL_new(cctx);
	if (!ssl || !SSL_set_fd(ssl, fd) || !SSL_set1_host(ssl, "localhost"))
		die_ssl("client SSL_new");
	int rc = 1;
	if (SSL_connect(ssl) != 1) {
		say(n, "handshake failed: %s", ssl_reason(why, sizeof why));
		goto out;
	}
	say(n, "handshake done (%s, certificate verified for localhost)", SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
	const char *lines[] = { "hello, who is there?\n", "and who answers now?\n" };
	const char *want[] = { mode == MODE_AFTER ? "parent" : "worker", "worker" };
	for (int i = 0; i < 2; i++) {
		if (wait_go(go_rd) < 0) {
			say(n, "the server never got ready");
			goto out;
		}
		ev(n, "send", mode == MODE_AFTER && i == 0 ? "parent" : "worker", "bytes=%zu",
		   strlen(lines[i]));
		char reply[256];
		int got = SSL_write(ssl, lines[i], (int)strlen(lines[i]));
		if (got > 0)
			got = SSL_read(ssl, reply, sizeof reply - 1);
		if (got <= 0) {
			say(n, "my connection failed: %s", ssl_reason(why, sizeof why));
			ev(n, "tls_error", NULL, "reason=%s", why);
			rc = 3;
			goto out;
		}
		reply[got] = '\0';
		reply[strcspn(reply, "\n")] = '\0';
		say(n, "sent \"%.*s\", got back \"%s\"", (int)strlen(lines[i]) - 1, lines[i], reply);
		char role[16] = "";
		if (sscanf(reply, "[%15s", role) != 1 || strcmp(role, want[i]) != 0) {
			say(n, "expected an answer from the %s", want[i]);
			goto out;
		}
	}
	if (wait_go(go_rd) < 0)
		goto out;
	ev(n, "close_notify", "worker", NULL);
	say(n, "SSL_shutdown(): close_notify sent, waiting for the server's");
	int s = SSL_shutdown(ssl);
	if (s == 0)
		s = SSL_shutdown(ssl); /* waits for the peer's close_notify */
	if (s == 1) {
		say(n, "the server answered close_notify: a clean TLS close");
		rc = 0;
	} else {
		say(n, "no close_notify from the server: %s", ssl_reason(why, sizeof why));
	}
out:
	SSL_free(ssl);
	SSL_CTX_free(cctx);
	close(fd);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Demo and server                                                      */
/* ------------------------------------------------------------------ */

/* One mode, one connection, told step by step. Returns 1 if the lesson's
 * outcome happened (naive: the client failed; else: it was served). */
static int demo_mode(struct nar *n, struct opts *o, SSL_CTX *ctx, X509 *cert, int mode)
{
	o->mode = mode;
	say(n, "==== mode %s ====", mode_names[mode]);
	ev(n, "mode", NULL, "mode=%s", mode_names[mode]);
	int port, lfd = listen_loopback(0, &port);
	if (lfd < 0)
		die("socket/bind/listen on 127.0.0.1");
	int gp[2];
	if (pipe2(gp, O_CLOEXEC) < 0)
		die("pipe2");
	o->go_fd = gp[1];
	struct pool p = { 0 };
	start_workers(n, o, ctx, &p, lfd, -1);

	pid_t cli = fork();
	if (cli < 0)
		die("fork");
	if (cli == 0) {
		n->role = "client";
		close(gp[1]);
		close(lfd);
		for (int i = 0; i < p.n; i++)
			close(p.chan[i]);
		int rc = client(n, port, gp[0], cert, mode);
		close(gp[0]);
		nar_close(n);
		SSL_CTX_free(ctx);
		_exit(rc);
	}
	close(gp[0]);
	int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (conn < 0)
		die("accept");
	say(n, "accept() -> fd %d", conn);
	ev(n, "accept", NULL, "fd=%d", conn);
	parent_handle(n, o, ctx, &p, conn);

	/* Wait for the worker's "done" (or its channel closing), bounded. */
	for (int i = 0; i < p.n; i++)
		while (p.chan[i] >= 0 && p.busy[i] > 0) {
			if (wait_readable(p.chan[i], WAIT_MS * 4) <= 0 || read_done(&p, i) < 0)
				break;
		}
	int st;
	int ok = reap_child(cli, WAIT_MS * 4, &st) == 0 && WIFEXITED(st);
	int code = ok ? WEXITSTATUS(st) : -1;
	stop_workers(&p);
	close(gp[1]);
	o->go_fd = -1;
	close(lfd);
	/* naive, and --bad-seq after the handshake, must break the client */
	int lesson = mode == MODE_NAIVE || (mode == MODE_AFTER && o->bad_seq) ? code == 3 : code == 0;
	say(n, "mode %s: the client %s", mode_names[mode],
	    code == 0 ? "was served to the end, with a clean close_notify"
		      : code != 3 ? "had trouble"
		      : mode == MODE_NAIVE ? "failed: the worker could not speak its TLS session"
					   : "failed: the worker wrote under a sequence number - a nonce - "
					     "already used with this key");
	return lesson;
}

/* --ktls auto on a kernel without the tls ULP: said once, at start. */
static void say_ktls(const struct nar *n, const struct opts *o)
{
	if (o->ktls == KTLS_AUTO && !o->ktls_ok && (o->mode == MODE_AFTER || o->mode < 0))
		say(n, "kernel TLS: not available here (tcp_available_ulp: \"%s\"); handed-off "
		       "sessions run on the worker's own record layer", o->ulps);
}

static int demo(struct nar *n, struct opts *o, SSL_CTX *ctx, X509 *cert, int mode)
{
	say_ktls(n, o);
	int from = mode == MODE_ALL ? MODE_NAIVE : mode, to = mode == MODE_ALL ? MODE_AFTER : mode;
	int ok = 1;
	char result[256] = "result:";
	for (int m = from; m <= to; m++) {
		int lesson = demo_mode(n, o, ctx, cert, m);
		ok &= lesson;
		size_t l = strlen(result);
		snprintf(result + l, sizeof result - l, " %s=%s", mode_names[m],
			 !lesson ? "unexpected" : m == MODE_NAIVE || (m == MODE_AFTER && o->bad_seq) ? "client_failed" : "served");
	}
	out_line("%s", result);
	return ok ? EXIT_LESSON : EXIT_RUNTIME;
}

static int serve(struct nar *n, struct opts *o, SSL_CTX *ctx, int port)
{
	int lfd = listen_loopback(port, &port);
	if (lfd < 0)
		die("socket/bind/listen on 127.0.0.1:%d", port);
	int sfd = signal_fd(0);
	if (sfd < 0)
		die("signalfd");
	announce_listening(port);
	say_ktls(n, o);
	struct pool p = { 0 };
	start_workers(n, o, ctx, &p, lfd, sfd);
	say(n, "mode %s: every connection goes to a worker", mode_names[o->mode]);
	for (;;) {
		struct pollfd pf[2 + MAX_WORKERS] = { { .fd = lfd, .events = POLLIN },
						       { .fd = sfd, .events = POLLIN } };
		for (int i = 0; i < p.n; i++)
			pf[2 + i] = (struct pollfd){ .fd = p.chan[i], .events = POLLIN };
		if (poll(pf, (nfds_t)(2 + p.n), -1) < 0) { /* a client, a worker or a signal */
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (pf[1].revents)
			break;
		for (int i = 0; i < p.n; i++)
			if (p.chan[i] >= 0 && pf[2 + i].revents && read_done(&p, i) < 0)
				say(n, "worker %d is gone", i);
		if (!(pf[0].revents & POLLIN))
			continue;
		int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (conn < 0)
			continue;
		parent_handle(n, o, ctx, &p, conn);
	}
	say(n, "shutting down: closing the workers' channels");
	for (int i = 0; i < p.n; i++)
		if (p.pid[i] > 0)
			kill(p.pid[i], SIGTERM);
	stop_workers(&p);
	close(sfd);
	close(lfd);
	return EXIT_LESSON;
}

int selftest(void); /* selftest.c */

int main(int argc, char **argv)
{
	enum { OPT_MODE = OPT_STAGE, OPT_WORKERS, OPT_KTLS, OPT_SUITES, OPT_TICKETS, OPT_CERT, OPT_KEY,
	       OPT_BADSEQ, OPT_READAHEAD, OPT_REKEY, OPT_SELFTEST };
	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "mode", required_argument, NULL, OPT_MODE },
		{ "workers", required_argument, NULL, OPT_WORKERS },
		{ "ktls", required_argument, NULL, OPT_KTLS },
		{ "ciphersuites", required_argument, NULL, OPT_SUITES },
		{ "tickets", required_argument, NULL, OPT_TICKETS },
		{ "cert", required_argument, NULL, OPT_CERT },
		{ "key", required_argument, NULL, OPT_KEY },
		{ "bad-seq", no_argument, NULL, OPT_BADSEQ },
		{ "read-ahead", no_argument, NULL, OPT_READAHEAD },
		{ "rekey-after", required_argument, NULL, OPT_REKEY },
		{ "selftest", no_argument, NULL, OPT_SELFTEST },
		{ 0 },
	};
	struct common_opts co = { 0 };
	struct opts o = { .mode = -1, .workers = 2, .ktls = KTLS_AUTO, .tickets = 2, .go_fd = -1 };
	int c, self = 0;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&co, c, optarg, usage))
			continue;
		switch (c) {
		case OPT_MODE: o.mode = parse_choice("--mode", optarg, mode_names); break;
		case OPT_WORKERS: o.workers = (int)parse_long("--workers", optarg, 1, MAX_WORKERS); break;
		case OPT_KTLS: o.ktls = parse_choice("--ktls", optarg, ktls_names); break;
		case OPT_SUITES: o.suites = optarg; break;
		case OPT_TICKETS: o.tickets = (int)parse_long("--tickets", optarg, 0, 10); break;
		case OPT_CERT: o.cert = optarg; break;
		case OPT_KEY: o.key = optarg; break;
		case OPT_BADSEQ: o.bad_seq = 1; break;
		case OPT_READAHEAD: o.read_ahead = 1; break;
		case OPT_REKEY: o.rekey_after = (uint64_t)parse_long("--rekey-after", optarg, 2, 1L << 30); break;
		case OPT_SELFTEST: self = 1; break;
		}
	}
	common_done(&co, argc, argv, usage);
	if (!o.cert != !o.key)
		usage_error("--cert and --key go together");
	if (self)
		return selftest();
	signal(SIGPIPE, SIG_IGN); /* a client that left is an EPIPE, handled where it happens */

	char ulps[256] = "";
	int avail = ktls_available(ulps, sizeof ulps);
	if (o.ktls == KTLS_FORCE && avail != 1) {
		fprintf(stderr, "%s: --ktls force: this kernel offers no TLS upper layer protocol "
				"(tcp_available_ulp: \"%s\"; try modprobe tls)\n",
			program_invocation_short_name, avail < 0 ? strerror(errno) : ulps);
		return EXIT_RUNTIME;
	}
	o.ktls_ok = o.ktls != KTLS_OFF && avail == 1;

	struct nar n;
	if (nar_open(&n, "parent", co.trace, co.mermaid) < 0)
		die("open trace file");
	snprintf(o.ulps, sizeof o.ulps, "%s", ulps);
	if (co.serve && o.mode < 0)
		o.mode = MODE_AFTER;
	EVP_PKEY *pkey;
	X509 *cert;
	make_identity(&pkey, &cert);
	SSL_CTX *ctx = server_ctx(&o, pkey, cert);
	int rc;
	if (co.serve) {
		rc = serve(&n, &o, ctx, co.port);
	} else {
		rc = demo(&n, &o, ctx, cert, o.mode < 0 ? MODE_ALL : o.mode);
	}
	if (co.mermaid)
		nar_mermaid(&n, stdout);
	nar_close(&n);
	SSL_CTX_free(ctx);
	X509_free(cert);
	EVP_PKEY_free(pkey);
	return rc;
}
