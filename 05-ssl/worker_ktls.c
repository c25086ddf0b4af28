/*
 * worker_ktls.c - the after-handshake worker's kernel-TLS branch: install
 * the handed-over session in the kernel (ktls.c) and serve lines with plain
 * write(2) and a recvmsg(2) that also reports each record's type.
 *
 * What the kernel leaves to this file: records that are not application
 * data. close_notify and the client's alerts arrive as control messages and
 * are answered here; a KeyUpdate from the client stops the kernel's
 * reception (Linux 6.14 and later take the next key from user space; older
 * kernels cannot), so the worker ends the connection with an alert, never
 * with garbage or a hang. If anything fails once TCP_ULP is attached, the
 * connection is closed: the worker's own record layer never writes on a
 * socket whose kernel already seals what is written.
 *
 * Called by take_over() in ssl_handoff.c with --ktls auto|force on a kernel
 * that takes TCP_ULP "tls"; `make test-ktls` runs it in a guest that has one.
 * Test-only: SSL_HANDOFF_KTLS_REFUSE_RX=1 in the environment makes the
 * install refuse TLS_RX after TLS_TX is in.
 * See also: the kernel's Documentation/networking/tls.rst, ktls.h,
 * RFC 8446 sections 4.6.3 (KeyUpdate) and 6 (alerts).
 */
#define _GNU_SOURCE
#include "ktls.h"
#include "ssl05.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

/* Answers every whole line in t->l with plain write(2): the kernel seals. */
static int answer_lines_plain(struct tls13 *t)
{
	char line[LINE_CAP + 1], reply[LINE_CAP + 64];
	size_t len;
	while ((len = next_line(&t->l, line)) > 0) {
		size_t r = make_reply(reply, sizeof reply, t->n->role, line, len);
		ev(t->n, "reply", "client", "line=%zu", len);
		if (write_all(t->conn, reply, r) < 0)
			return -1;
	}
	return 0;
}

/* Takes in application data, as much as fits at a time, answering lines. */
static int take_data(struct tls13 *t, const char *data, size_t len)
{
	for (size_t off = 0; off < len;) {
		size_t room = sizeof t->l.buf - t->l.len;
		size_t k = len - off < room ? len - off : room;
		memcpy(t->l.buf + t->l.len, data + off, k);
		t->l.len += k;
		off += k;
		if (answer_lines_plain(t) < 0)
			return -1;
	}
	return 0;
}

static void fatal_alert(struct tls13 *t, int alert)
{
	say(t->n, "fatal: sending a %s alert through the kernel and closing", rec_alert_name(alert));
	ev(t->n, "alert", "client", "alert=%s", rec_alert_name(alert));
	ktls_send_alert(t->conn, 2, alert);
}

/* One record the kernel handed up that is not data: 1 to go on, 0 when over.
 * ktls_control makes the record layer's checks on it. */
static int control_record(struct tls13 *t, int type, const unsigned char *b, ssize_t len)
{
	const struct nar *n = t->n;
	int alert, requested;
	switch (ktls_control(type, b, (size_t)len, &alert, &requested)) {
	case KTLS_CLOSE_NOTIFY:
		say(n, "the client sent close_notify (a control message from the kernel); "
		       "answering with mine");
		ev(n, "close_notify", "client", NULL);
		ktls_send_alert(t->conn, 1, ALERT_CLOSE_NOTIFY);
		return 0;
	case KTLS_PEER_ALERT:
		say(n, "the client sent alert %d (%s): the connection is over", alert, rec_alert_name(alert));
		ev(n, "client_alert", NULL, "alert=%d", alert);
		return 0;
	case KTLS_PEER_KEY_UPDATE:
		say(n, "KeyUpdate from the client: the kernel cannot take the next read key; "
		       "ending the connection");
		ev(n, "peer_key_update", NULL, "requested=%d", requested);
		break;
	}
	fatal_alert(t, alert);
	return 0;
}

/* Serves the connection through the kernel until it is over. */
static void serve_plain(struct tls13 *t)
{
	const struct nar *n = t->n;
	unsigned char buf[REC_MAX_PLAIN];
	if (answer_lines_plain(t) < 0) /* what the parent had decrypted */
		return;
	for (;;) {
		go(t->o);
		int type;
		ssize_t r = ktls_recv(t->conn, buf, sizeof buf, &type, IDLE_MS, 0);
		if (r == 0) {
			say(n, "the client closed TCP without a close_notify");
			return;
		}
		if (r < 0 && errno == EBADMSG) {
			say(n, "the kernel found a record that fails authentication");
			fatal_alert(t, ALERT_BAD_RECORD_MAC);
			return;
		}
		if (r < 0) {
			say(n, "recvmsg: %s (%s)", strerrorname_np(errno), strerror(errno));
			return;
		}
		int more = type == CT_APPLICATION_DATA ? take_data(t, (char *)buf, (size_t)r) == 0
					     : control_record(t, type, buf, r);
		OPENSSL_cleanse(buf, (size_t)r);
		if (!more)
			return;
	}
}

int worker_ktls(struct tls13 *t)
{
	const struct nar *n = t->n;
	unsigned flags = getenv("SSL_HANDOFF_KTLS_REFUSE_RX") ? KTLS_TEST_REFUSE_RX : 0;
	int s = ktls_install(t->conn, &t->sess.rd, &t->sess.wr, flags);
	if (s == KTLS_NO_ULP) {
		say(n, "kernel TLS refused (setsockopt TCP_ULP: %s): the socket is untouched, "
		       "using my own record layer", strerrorname_np(errno));
		return 0;
	}
	if (s == KTLS_BROKEN) {
		/* No fallback: the kernel may already seal what is written. */
		int e = errno;
		say(n, "kernel TLS half installed (%s (%s)): closing the connection, "
		       "never my own records on it", strerrorname_np(e), strerror(e));
		ev(n, "ktls", NULL, "installed=0 errno=%s", strerrorname_np(e));
		return 1;
	}
	say(n, "kernel TLS installed: the kernel now holds the session; plain read and write from here");
	ev(n, "ktls", NULL, "installed=1");
	serve_plain(t);
	return 1;
}
