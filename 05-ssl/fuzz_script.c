/*
 * fuzz_script.c - see fuzz_script.h: a client, driven by fuzzer bytes,
 * against a worker's session, with the checks that make it a test.
 */
#define _GNU_SOURCE
#include "fuzz_script.h"

#include <stdlib.h>
#include <string.h>

/* ---- what the client has done, and what the worker must see ------------- */

#define WIRE_CAP (256 * 1024)

struct play {
	struct tlsx_sess *w, *c;
	uint8_t wire[WIRE_CAP];  /* every byte the client put on the wire */
	size_t wire_len, wire_off; /* wire_off: how much the worker has been given */
	uint8_t sent[WIRE_CAP];  /* the application data the client sealed, in order */
	size_t sent_len, recv_len; /* recv_len: how much of it the worker handed out */
	int tampered;            /* garbage or a flipped bit is on the wire */
	int closed;              /* the client sealed its last record */
	int empty_run;           /* records in a row without data, as the worker counts */
	int end_event;           /* what the worker must report at the end (0: nothing) */
	int end_alert;           /* ... and the alert with it */
	size_t end_at;           /* ... after exactly this much data */
	int dead;                /* the worker reported an event that ends the session */
};

static void need(int ok)
{
	if (!ok)
		abort();
}

/* Appends one record the client seals; 0 if it could not (full wire, the
 * sequence number at its end): the script stops sealing then. */
static int seal(struct play *p, uint8_t type, const void *data, size_t len)
{
	size_t n;
	if (p->closed || WIRE_CAP - p->wire_len < REC_HEADER + len + 1 + REC_TAG)
		return 0;
	if (rec_seal(&p->c->wr, type, data, len, 0, p->wire + p->wire_len, WIRE_CAP - p->wire_len,
		     &n) < 0)
		return 0;
	p->wire_len += n;
	return 1;
}

/* One record without application data: the worker refuses the one after
 * TLSX_MAX_EMPTY_RECORDS in a row, so from there on nothing else matters. */
static void no_data(struct play *p)
{
	if (++p->empty_run > TLSX_MAX_EMPTY_RECORDS) {
		p->closed = 1;
		p->end_event = TLSX_FATAL;
		p->end_alert = ALERT_UNEXPECTED_MESSAGE;
		p->end_at = p->sent_len;
	}
}

static void send_data(struct play *p, size_t len)
{
	static uint8_t buf[REC_MAX_PLAIN];
	if (WIRE_CAP - p->sent_len < len)
		return;
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)((p->sent_len + i) * 31 + 7);
	if (!seal(p, CT_APPLICATION_DATA, buf, len))
		return;
	memcpy(p->sent + p->sent_len, buf, len);
	p->sent_len += len;
	if (len)
		p->empty_run = 0;
	else
		no_data(p);
}

static void send_key_update(struct play *p, int requested)
{
	uint8_t ku[5] = { HS_KEY_UPDATE, 0, 0, 1, (uint8_t)requested };
	if (!seal(p, CT_HANDSHAKE, ku, sizeof ku))
		return;
	need(rec_update(&p->c->wr) == 0);
	no_data(p);
}

static void send_alert(struct play *p, int alert)
{
	uint8_t a[2] = { alert == ALERT_CLOSE_NOTIFY ? 1 : 2, (uint8_t)alert };
	if (!seal(p, CT_ALERT, a, sizeof a))
		return;
	p->closed = 1;
	p->end_event = alert == ALERT_CLOSE_NOTIFY ? TLSX_CLOSE_NOTIFY : TLSX_PEER_ALERT;
	p->end_alert = alert;
	p->end_at = p->sent_len;
}

/* ---- the worker's side -------------------------------------------------- */

/* Gives the worker up to k more bytes of the wire, as one read(2) would. */
static void deliver(struct play *p, size_t k)
{
	uint8_t *room;
	size_t n = tlsx_in_room(p->w, &room);
	if (k > n)
		k = n;
	if (k > p->wire_len - p->wire_off)
		k = p->wire_len - p->wire_off;
	memcpy(room, p->wire + p->wire_off, k);
	tlsx_in_added(p->w, k);
	p->wire_off += k;
}

/* One tlsx_read of up to cap bytes, checked. Returns the event (0: data). */
static int worker_read(struct play *p, size_t cap)
{
	static uint8_t out[REC_MAX_PLAIN];
	int ev = 0, buffered = tlsx_buffered(p->w);
	size_t k = tlsx_read(p->w, out, cap, &ev);
	/* "nothing buffered" must mean exactly that: no bytes and no event
	 * without a read from the socket */
	if (!buffered)
		need(k == 0 && ev == TLSX_WANT_READ);
	if (k > 0) {
		/* Handed-out bytes are always the client's, in order: the AEAD lets
		 * nothing else through, tampered or not. */
		need(k <= cap && p->recv_len + k <= p->sent_len);
		need(memcmp(out, p->sent + p->recv_len, k) == 0);
		p->recv_len += k;
		return 0;
	}
	if (ev == TLSX_WANT_READ)
		return ev;
	p->dead = 1;
	/* Only the client's own alert can make one of these two. */
	if (ev == TLSX_CLOSE_NOTIFY || ev == TLSX_PEER_ALERT)
		need(ev == p->end_event && p->w->alert == p->end_alert && p->recv_len == p->end_at);
	else if (!p->tampered)
		need(ev == TLSX_FATAL && p->end_event == TLSX_FATAL && p->w->alert == p->end_alert &&
		     p->recv_len == p->end_at);
	return ev;
}

/* The worker answers with n bytes; the client must read exactly them (with
 * the worker's own KeyUpdates, owed or at its limit, on the way). */
static void worker_reply(struct play *p, size_t n)
{
	static uint8_t msg[2048], sealed[2048 + 512], got[2048];
	size_t len, have = 0;
	for (size_t i = 0; i < n; i++)
		msg[i] = (uint8_t)(i * 13 + n);
	if (tlsx_seal_data(p->w, msg, n, sealed, sizeof sealed, &len, NULL) < 0)
		return; /* the write sequence number ran out: a fuzzed state can start there */
	need(len <= tlsx_seal_size(n));
	uint8_t *room;
	need(tlsx_in_room(p->c, &room) >= len);
	memcpy(room, sealed, len);
	tlsx_in_added(p->c, len);
	for (;;) {
		int ev = 0;
		size_t k = tlsx_read(p->c, got + have, sizeof got - have, &ev);
		if (k == 0) {
			need(ev == TLSX_WANT_READ);
			break;
		}
		have += k;
	}
	need(have == n && memcmp(got, msg, n) == 0);
}

/* ---- the script --------------------------------------------------------- */

void fuzz_script(struct tlsx_sess *worker, struct tlsx_sess *client, const uint8_t *ops, size_t n)
{
	static struct play play;
	struct play *p = &play;
	memset(p, 0, offsetof(struct play, wire));
	p->w = worker;
	p->c = client;
	size_t i = 0;
#define ARG() (i < n ? ops[i++] : 0)
	while (i < n) {
		uint8_t op = ops[i++];
		switch (op % 10) {
		case 0: { /* application data, 0 to 2^14 bytes */
			size_t len = (size_t)ARG() << 8;
			len = (len | ARG()) % (REC_MAX_PLAIN + 1);
			send_data(p, len);
			break;
		}
		case 1:
			send_key_update(p, op >> 7);
			break;
		case 2:
			send_data(p, 0);
			break;
		case 3: /* an alert: close_notify or a fatal one */
			send_alert(p, op & 0x80 ? ALERT_DECODE_ERROR : ALERT_CLOSE_NOTIFY);
			break;
		case 4: { /* raw bytes from the input itself */
			size_t len = ARG() % 64;
			for (size_t k = 0; k < len && i < n && p->wire_len < WIRE_CAP; k++)
				p->wire[p->wire_len++] = ops[i++];
			p->tampered = 1;
			break;
		}
		case 5: { /* a bit flipped in flight */
			size_t at = (size_t)ARG() << 8;
			at |= ARG();
			if (p->wire_off < p->wire_len) {
				p->wire[p->wire_off + at % (p->wire_len - p->wire_off)] ^= (uint8_t)(1 << (op >> 5));
				p->tampered = 1;
			}
			break;
		}
		case 6: case 7: { /* the next k bytes reach the worker: any split */
			size_t k = (size_t)ARG() << (op & 0x80 ? 8 : 0);
			deliver(p, k | ARG());
			break;
		}
		case 8: /* the worker reads into a buffer of 1 to 4096 bytes */
			if (!p->dead)
				worker_read(p, 1 + ((size_t)ARG() << 4 | (op >> 4)) % 4096);
			break;
		case 9:
			if (!p->dead)
				worker_reply(p, ARG() * 8u);
			break;
		}
	}
#undef ARG
	/* The end: everything on the wire reaches the worker, which reads
	 * until it wants more that will never come, or reports its end. */
	while (!p->dead) {
		deliver(p, WIRE_CAP);
		int ev = worker_read(p, 1000);
		if (ev == TLSX_WANT_READ) {
			uint8_t *room;
			if (p->wire_off == p->wire_len)
				break;
			/* more on the wire, the worker wants it, and has no room: stuck */
			need(tlsx_in_room(p->w, &room) > 0);
		}
	}
	if (!p->tampered) {
		if (p->end_event)
			need(p->dead);
		else
			need(p->recv_len == p->sent_len);
	}
}
