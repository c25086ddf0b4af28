/*
 * lines.c - stage 05's line protocol and small helpers: a reply per line,
 * serving lines through an SSL object, OpenSSL's reason for a failure,
 * bounded reads, the server's TLS context.
 *
 * Used by ssl_handoff.c (the lesson) and the machinery around it; run
 * ./ssl_handoff --help for the program.
 * See also: SSL_read(3), SSL_get_error(3), socket(7) SO_RCVTIMEO.
 */
#define _GNU_SOURCE
#include "../common/cli.h"
#include "ssl05.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>

/* "your turn" to the demo's client: the server side has recorded its events. */
void go(const struct opts *o)
{
	if (o->go_fd >= 0)
		(void)!write(o->go_fd, "g", 1);
}

/* An OpenSSL failure in main's own setup: the call and OpenSSL's reason, exit 1. */
_Noreturn void die_ssl(const char *what)
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
const char *ssl_reason(char *buf, size_t cap)
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
void set_timeouts(int fd, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Sets or clears O_NONBLOCK on fd. -1/errno. */
int set_nonblocking(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -1;
	return fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* Reads exactly len bytes, each read bounded by ms. Returns len, or fewer
 * when the peer closed (0 = closed before the first byte), or -1/errno. */
ssize_t read_exact(int fd, uint8_t *buf, size_t len, int ms)
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
size_t make_reply(char *out, size_t cap, const char *role, const char *line, size_t len)
{
	int w = snprintf(out, cap, "[%s %d] ", role, (int)getpid());
	size_t n = w > 0 ? (size_t)w : 0;
	for (size_t i = 0; i < len && n + 2 < cap; i++)
		if (line[i] != '\n' && line[i] != '\r')
			out[n++] = (char)toupper((unsigned char)line[i]);
	out[n++] = '\n';
	return n;
}

/* The next complete line (or a full buffer) into out; 0 if none yet. */
size_t next_line(struct lines *l, char *out)
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

/* The server's TLS context (tls_export.c builds it; stage 06 uses it too).
 * A bad --ciphersuites exits 2, any other failure exits 1. */
SSL_CTX *server_ctx(const struct opts *o, EVP_PKEY *pkey, X509 *cert)
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

/* ---- serving lines through an SSL object -------------------------------- */

/* The before-handshake worker, and the parent when it refuses a handoff:
 * answers l's lines and then every line read through ssl, until the client
 * closes or fails. Returns 1 then, or 0 when the socket has nothing more for
 * now (non-blocking: call again when it is readable; blocking: its receive
 * timeout expired). Neither ssl nor its descriptor is freed here. */
int ssl_serve_lines(const struct nar *n, const struct opts *o, SSL *ssl, struct lines *l)
{
	char line[LINE_CAP + 1], reply[LINE_CAP + 64], why[128];
	for (;;) {
		size_t len;
		while ((len = next_line(l, line)) > 0) {
			size_t r = make_reply(reply, sizeof reply, n->role, line, len);
			ev(n, "reply", "client", "line=%zu", len);
			int w = SSL_write(ssl, reply, (int)r);
			if (w <= 0 && SSL_get_error(ssl, w) == SSL_ERROR_WANT_WRITE) {
				/* Its socket buffer is full: it sends and does not read. Waiting
				 * would let one client hold the others up, so it goes. */
				say(n, "the client does not read its replies: closing the connection");
				ev(n, "ended", NULL, "reason=not_reading");
				return 1;
			}
			if (w <= 0) {
				say(n, "SSL_write failed: %s", ssl_reason(why, sizeof why));
				return 1;
			}
		}
		go(o);
		int got = SSL_read(ssl, l->buf + l->len, (int)(sizeof l->buf - l->len));
		if (got > 0) {
			l->len += (size_t)got;
			continue;
		}
		int err = SSL_get_error(ssl, got);
		if (err == SSL_ERROR_WANT_READ)
			return 0;
		if (err == SSL_ERROR_ZERO_RETURN) {
			say(n, "the client sent close_notify; answering with mine");
			ev(n, "close_notify", "client", NULL);
			SSL_shutdown(ssl);
		} else {
			say(n, "the connection ended: %s", ssl_reason(why, sizeof why));
			ev(n, "ended", NULL, "reason=%s", why);
		}
		return 1;
	}
}

/* ssl_serve_lines on a blocking socket, to the end: a receive timeout ends
 * the connection too (said and traced). */
void ssl_serve_lines_blocking(const struct nar *n, const struct opts *o, SSL *ssl, struct lines *l)
{
	if (ssl_serve_lines(n, o, ssl, l) == 0) {
		say(n, "nothing from the client for %d s: closing the connection", IDLE_MS / 1000);
		ev(n, "ended", NULL, "reason=idle");
	}
}
