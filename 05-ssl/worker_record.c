/*
 * worker_record.c - the after-handshake worker's data path: TLS 1.3 records
 * read, opened, answered and sealed with libcrypto alone (record.c through
 * tls_export.c), no SSL object. Alerts for bad records, the peer's KeyUpdate
 * followed, our own KeyUpdate before the write key's limit.
 *
 * Called by take_over() in ssl_handoff.c once the session state has arrived;
 * run ./ssl_handoff --mode after-handshake to see it.
 * See also: RFC 8446 sections 5 (records), 6 (alerts), 4.6.3 (KeyUpdate),
 * 5.5 (key usage limits); record.h, tls_export.h.
 */
#define _GNU_SOURCE
#include "ssl05.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

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

void worker_record_loop(struct tls13 *t)
{
	const struct nar *n = t->n;
	int rc = answer_lines(t) < 0 ? OVER : GO_ON;
	while (rc == GO_ON) {
		go(t->o);
		rc = one_record(t);
	}
	if (rc >= ALERT_BASE) {
		int alert = rc - ALERT_BASE;
		say(n, "fatal: sending a %s alert and closing", rec_alert_name(alert));
		ev(n, "alert", "client", "alert=%s", rec_alert_name(alert));
		send_alert(t, alert);
	}
}
