/*
 * record_test.c - unit tests of the worker's side of stage 05's TLS 1.3
 * session (record.c, tls_export.c, handoff_state.c) on the paths a real
 * client never takes: pipelined records, floods of records without data, a
 * TLSInnerPlaintext one byte too long, a forged state message, and where the
 * keys live.
 *
 * Run:   ./record_test --list     the names of the cases
 *        ./record_test CASE       one case: prints "ok CASE" and exits 0, or
 *                                 "FAIL CASE: line N: what" and exits 1
 * tests/test_05_record.py runs every case. The "client" is a second session
 * with the two directions swapped: what it seals, ours must open.
 *
 * See also: record.h, tls_export.h, handoff_state.h; RFC 8446 sections 4.6.3
 * (KeyUpdate), 5.1 (empty records), 5.2 and 5.4 (record sizes); madvise(2),
 * proc(5) (/proc/PID/smaps, VmFlags "dd").
 */
#define _GNU_SOURCE
#include "handoff_state.h"
#include "record.h"
#include "tls_export.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *current;

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			printf("FAIL %s: line %d: %s (errno %d %s)\n", current, __LINE__,  \
			       #cond, errno, strerror(errno));                             \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

/* ---- a worker and its client -------------------------------------------- */

/* Both are big (two records of input each): static, and set up per case. */
static struct tlsx_sess worker, client;

/* The worker reads what the client writes and the other way round: the
 * client's state is the worker's with the two directions swapped. */
static void sessions(uint16_t suite)
{
	struct handoff_state st = { .suite = suite }, peer = { .suite = suite };
	size_t sl = rec_secret_len(suite);
	st.rd.secret_len = st.wr.secret_len = peer.rd.secret_len = peer.wr.secret_len = sl;
	memset(st.rd.secret, 0xc1, sl); /* client -> server */
	memset(st.wr.secret, 0x5e, sl); /* server -> client */
	memcpy(peer.rd.secret, st.wr.secret, sl);
	memcpy(peer.wr.secret, st.rd.secret, sl);
	st.rd.seq = peer.wr.seq = 3;
	CHECK(tlsx_sess_init(&worker, &st, 0) == 0);
	CHECK(tlsx_sess_init(&client, &peer, 0) == 0);
}

static void done(void)
{
	tlsx_sess_free(&worker);
	tlsx_sess_free(&client);
}

/* Appends raw bytes to the worker's input, as a read(2) from the socket would. */
static void deliver(const void *p, size_t n)
{
	uint8_t *room;
	CHECK(tlsx_in_room(&worker, &room) >= n);
	memcpy(room, p, n);
	tlsx_in_added(&worker, n);
}

/* The client seals one record of the given inner type (any length up to
 * 2^14, 0 included) and returns its bytes in rec[0..*len). */
static void client_record(uint8_t type, const void *data, size_t n, uint8_t *rec, size_t *len)
{
	CHECK(rec_seal(&client.wr, type, data, n, 0, rec, REC_HEADER + REC_MAX_CIPHER, len) == 0);
}

/* The client sends a KeyUpdate (update_not_requested) straight to the worker. */
static void client_key_update(void)
{
	uint8_t rec[64];
	size_t len;
	CHECK(tlsx_seal_key_update(&client, rec, sizeof rec, &len) == 0);
	deliver(rec, len);
}

static void client_data(const char *text)
{
	static uint8_t rec[REC_HEADER + REC_MAX_CIPHER];
	size_t len;
	client_record(CT_APPLICATION_DATA, text, strlen(text), rec, &len);
	deliver(rec, len);
}

/* tlsx_read into a small buffer: the bytes, or 0 and the event. */
static size_t worker_read(char *out, size_t cap, int *ev)
{
	*ev = 0;
	return tlsx_read(&worker, out, cap, ev);
}

/* ---- tlsx_buffered: work the worker can do without reading -------------- */

/* Two records arrive in one read; the worker takes the first in full and
 * stops (its output is full). The second is whole in the buffer and no new
 * EPOLLIN will come for it: tlsx_buffered must say so. */
static void buffered_pipelined(void)
{
	sessions(SUITE_AES_128_GCM_SHA256);
	char out[64];
	int ev;
	CHECK(!tlsx_buffered(&worker));
	client_data("first\n");
	client_data("second\n");
	CHECK(tlsx_buffered(&worker));
	CHECK(worker_read(out, 3, &ev) == 3 && memcmp(out, "fir", 3) == 0);
	CHECK(tlsx_buffered(&worker)); /* plaintext still held */
	CHECK(worker_read(out, 3, &ev) == 3 && memcmp(out, "st\n", 3) == 0);
	/* the first record is used up but still held at in[0]; the second waits */
	CHECK(tlsx_buffered(&worker));
	CHECK(worker_read(out, sizeof out, &ev) == 7 && memcmp(out, "second\n", 7) == 0);
	CHECK(!tlsx_buffered(&worker));
	CHECK(worker_read(out, sizeof out, &ev) == 0 && ev == TLSX_WANT_READ);
	done();
}

/* Half a record is no work: the rest has to be read first. */
static void buffered_partial(void)
{
	sessions(SUITE_CHACHA20_POLY1305_SHA256);
	static uint8_t rec[REC_HEADER + REC_MAX_CIPHER];
	size_t len;
	char out[64];
	int ev;
	client_data("one\n");
	client_record(CT_APPLICATION_DATA, "two\n", 4, rec, &len);
	deliver(rec, 3); /* not even a whole header */
	CHECK(worker_read(out, sizeof out, &ev) == 4);
	CHECK(!tlsx_buffered(&worker));
	deliver(rec + 3, len - 4); /* all but the last byte */
	CHECK(!tlsx_buffered(&worker));
	deliver(rec + len - 1, 1);
	CHECK(tlsx_buffered(&worker));
	CHECK(worker_read(out, sizeof out, &ev) == 4 && memcmp(out, "two\n", 4) == 0);
	CHECK(!tlsx_buffered(&worker));
	done();
}

/* A KeyUpdate waiting behind data is work too (tlsx_read moves the key on). */
static void buffered_key_update(void)
{
	sessions(SUITE_AES_256_GCM_SHA384);
	char out[64];
	int ev;
	client_data("x\n");
	client_key_update();
	CHECK(worker_read(out, sizeof out, &ev) == 2);
	CHECK(tlsx_buffered(&worker));
	CHECK(worker_read(out, sizeof out, &ev) == 0 && ev == TLSX_WANT_READ);
	CHECK(worker.peer_updates == 1 && !tlsx_buffered(&worker));
	done();
}

/* ---- floods of records without application data ------------------------- */

/* 40 KeyUpdates in a row: the 33rd is refused with unexpected_message. */
static void flood_key_updates(void)
{
	sessions(SUITE_AES_128_GCM_SHA256);
	char out[64];
	int ev;
	for (int i = 0; i < 40; i++)
		client_key_update();
	CHECK(worker_read(out, sizeof out, &ev) == 0 && ev == TLSX_FATAL);
	CHECK(worker.alert == ALERT_UNEXPECTED_MESSAGE);
	CHECK(worker.peer_updates == TLSX_MAX_EMPTY_RECORDS);
	done();
}

/* 31, then data, is a legal (if busy) peer; so is 32, data, 32, data: the
 * count is of records in a row. */
static void flood_under_cap(void)
{
	sessions(SUITE_AES_128_GCM_SHA256);
	char out[64];
	int ev;
	for (int i = 0; i < 31; i++)
		client_key_update();
	client_data("after 31\n");
	CHECK(worker_read(out, sizeof out, &ev) == 9 && memcmp(out, "after 31\n", 9) == 0);
	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < TLSX_MAX_EMPTY_RECORDS; i++)
			client_key_update();
		client_data("after 32\n");
		CHECK(worker_read(out, sizeof out, &ev) == 9 && memcmp(out, "after 32\n", 9) == 0);
	}
	CHECK(worker.peer_updates == 31 + 2 * TLSX_MAX_EMPTY_RECORDS);
	done();
}

/* Empty application_data records count as well, mixed with KeyUpdates, and
 * through tlsx_open_record (stage 05's blocking worker) as through tlsx_read. */
static void flood_empty_records(void)
{
	sessions(SUITE_CHACHA20_POLY1305_SHA256);
	static uint8_t rec[REC_HEADER + REC_MAX_CIPHER];
	size_t len, plain_len;
	uint8_t *plain;
	int ev, request, alert = 0, i;
	for (i = 0; i < 100 && alert == 0; i++) {
		if (i % 2)
			CHECK(tlsx_seal_key_update(&client, rec, sizeof rec, &len) == 0);
		else
			client_record(CT_APPLICATION_DATA, NULL, 0, rec, &len);
		alert = tlsx_open_record(&worker, rec, len, &plain, &plain_len, &ev, &request);
		CHECK(plain_len == 0);
	}
	CHECK(alert == ALERT_UNEXPECTED_MESSAGE && i == TLSX_MAX_EMPTY_RECORDS + 1);
	done();
}

/* ---- record sizes (RFC 8446 5.4) ---------------------------------------- */

/* Seals a record by hand, with inner bytes of TLSInnerPlaintext (content,
 * type 23, then zeros): rec_seal refuses to make one over 2^14 + 1. */
static size_t forge(struct rec_dir *w, size_t content, size_t inner, uint8_t *rec)
{
	const EVP_CIPHER *cipher = w->suite == SUITE_AES_128_GCM_SHA256 ? EVP_aes_128_gcm()
				   : w->suite == SUITE_AES_256_GCM_SHA384 ? EVP_aes_256_gcm()
									  : EVP_chacha20_poly1305();
	uint8_t nonce[REC_IV], *body = rec + REC_HEADER;
	memcpy(nonce, w->iv, REC_IV);
	for (int i = 0; i < 8; i++)
		nonce[REC_IV - 1 - i] ^= (uint8_t)(w->seq >> (8 * i));
	rec[0] = CT_APPLICATION_DATA;
	rec[1] = rec[2] = 3;
	rec[3] = (uint8_t)((inner + REC_TAG) >> 8);
	rec[4] = (uint8_t)(inner + REC_TAG);
	memset(body, 'a', content);
	body[content] = CT_APPLICATION_DATA;
	memset(body + content + 1, 0, inner - content - 1);
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int n1, n2;
	CHECK(ctx && EVP_EncryptInit_ex(ctx, cipher, NULL, w->key, nonce) == 1 &&
	      EVP_EncryptUpdate(ctx, NULL, &n1, rec, REC_HEADER) == 1 &&
	      EVP_EncryptUpdate(ctx, body, &n1, body, (int)inner) == 1 &&
	      EVP_EncryptFinal_ex(ctx, body + n1, &n2) == 1 &&
	      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, REC_TAG, body + inner) == 1);
	EVP_CIPHER_CTX_free(ctx);
	w->seq++;
	return REC_HEADER + inner + REC_TAG;
}

/* 2^14 + 1 bytes of inner plaintext open; 16,623 (2^14 of content, the type
 * and 238 zeros: within the outer 2^14 + 256) is record_overflow. */
static void inner_overflow(void)
{
	static const uint16_t suites[] = { SUITE_AES_128_GCM_SHA256, SUITE_AES_256_GCM_SHA384,
					   SUITE_CHACHA20_POLY1305_SHA256 };
	static uint8_t rec[REC_HEADER + REC_MAX_CIPHER];
	for (size_t k = 0; k < sizeof suites / sizeof suites[0]; k++) {
		sessions(suites[k]);
		uint8_t type, *plain;
		size_t plain_len, len = forge(&client.wr, REC_MAX_PLAIN, REC_MAX_INNER, rec);
		CHECK(rec_open(&worker.rd, rec, len, &type, &plain, &plain_len) == 0);
		CHECK(type == CT_APPLICATION_DATA && plain_len == REC_MAX_PLAIN);
		len = forge(&client.wr, REC_MAX_PLAIN, 16623, rec);
		CHECK(len - REC_HEADER <= REC_MAX_CIPHER);
		CHECK(rec_open(&worker.rd, rec, len, &type, &plain, &plain_len) == ALERT_RECORD_OVERFLOW);
		/* the same through the buffered reader: refused from its header */
		char out[16];
		int ev;
		len = forge(&client.wr, 100, REC_MAX_INNER + 1, rec);
		deliver(rec, REC_HEADER);
		CHECK(worker_read(out, sizeof out, &ev) == 0 && ev == TLSX_FATAL);
		CHECK(worker.alert == ALERT_RECORD_OVERFLOW);
		done();
	}
}

/* ---- the state message -------------------------------------------------- */

/* A forged state with 20,000 bytes of pending plaintext: more than a
 * worker's buffer holds, so the decoder refuses it (and the encoder will not
 * make one). HS_MAX_PENDING itself is accepted. */
static void state_pending_bound(void)
{
	static struct handoff_state st, got;
	static uint8_t msg[7 + 2 * (1 + REC_MAX_SECRET + 8) + 2 + 20000];
	size_t len;
	st.suite = SUITE_AES_128_GCM_SHA256;
	st.rd.secret_len = st.wr.secret_len = 32;
	st.pending_len = HS_MAX_PENDING;
	memset(st.pending, 'p', st.pending_len);
	CHECK(hs_encode(&st, msg, sizeof msg, &len) == 0);
	CHECK(hs_decode(&got, msg, len) == 0 && got.pending_len == HS_MAX_PENDING);
	CHECK(HS_MAX_PENDING <= REC_MAX_PLAIN); /* what stage 05's worker buffers */

	/* now forge: the same header, a length field of 20,000, and the bytes */
	size_t at = len - HS_MAX_PENDING - 2;
	msg[at] = 20000 >> 8;
	msg[at + 1] = 20000 & 0xff;
	memset(msg + at + 2, 'p', 20000);
	errno = 0;
	CHECK(hs_decode(&got, msg, at + 2 + 20000) == -1 && errno == EBADMSG);
	CHECK(got.pending_len == 0);
	/* one byte over is refused just the same */
	msg[at] = (HS_MAX_PENDING + 1) >> 8;
	msg[at + 1] = (HS_MAX_PENDING + 1) & 0xff;
	CHECK(hs_decode(&got, msg, at + 2 + HS_MAX_PENDING + 1) == -1 && errno == EBADMSG);
	st.pending_len = HS_MAX_PENDING + 1;
	CHECK(hs_encode(&st, msg, sizeof msg, &len) == -1 && errno == EINVAL);
	hs_wipe(&st);
	hs_wipe(&got);
}

/* ---- alerts and a half-sent record (tls_export.h, the order rule) ------- */

/* Gives the client k bytes the worker sealed, and lets it read: the bytes
 * it handed out go to got[*have..], the event is returned. */
static int client_gets(const uint8_t *p, size_t k, char *got, size_t *have)
{
	uint8_t *room;
	CHECK(tlsx_in_room(&client, &room) >= k);
	memcpy(room, p, k);
	tlsx_in_added(&client, k);
	for (;;) {
		int ev = 0;
		size_t n = tlsx_read(&client, got + *have, 4096 - *have, &ev);
		if (n == 0)
			return ev;
		*have += n;
	}
}

/* The worker has sealed a reply and sent only part of it when it must say
 * goodbye. Queued behind the reply, the alert arrives after the whole reply;
 * sent on its own at that moment it lands inside the half-sent record and
 * the client sees a bad record instead of either. */
static void alert_behind_queue(void)
{
	static uint8_t queue[4096], alone[64];
	static char got[4096];
	size_t len, alone_len, have = 0;
	for (int wrong = 0; wrong < 2; wrong++) {
		sessions(SUITE_AES_128_GCM_SHA256);
		CHECK(tlsx_seal_data(&worker, "the reply\n", 10, queue, sizeof queue, &len, NULL) == 0);
		size_t off = 7; /* sent so far: the record is half out */
		have = 0;
		CHECK(client_gets(queue, off, got, &have) == TLSX_WANT_READ && have == 0);
		if (!wrong) {
			CHECK(tlsx_queue_alert(&worker, ALERT_CLOSE_NOTIFY, queue, sizeof queue, &len) == 0);
			CHECK(client_gets(queue + off, len - off, got, &have) == TLSX_CLOSE_NOTIFY);
			CHECK(have == 10 && memcmp(got, "the reply\n", 10) == 0);
		} else {
			CHECK(tlsx_seal_alert(&worker, ALERT_CLOSE_NOTIFY, alone, sizeof alone, &alone_len) == 0);
			CHECK(client_gets(alone, alone_len, got, &have) == TLSX_WANT_READ);
			CHECK(client_gets(queue + off, len - off, got, &have) == TLSX_FATAL && have == 0);
			CHECK(client.alert == ALERT_BAD_RECORD_MAC);
		}
		done();
	}
	/* no room behind the queue: refused, and the queue is left as it was */
	sessions(SUITE_AES_128_GCM_SHA256);
	len = sizeof queue - 10;
	CHECK(tlsx_queue_alert(&worker, ALERT_DECODE_ERROR, queue, sizeof queue, &len) == -1);
	CHECK(errno == EMSGSIZE && len == sizeof queue - 10 && worker.wr.seq == 0);
	done();
}

/* ---- keys and core dumps ------------------------------------------------ */

/* The VmFlags of the mapping that holds addr (proc(5)): "dd" is
 * MADV_DONTDUMP. 1 if it has dd, 0 if not, -1 if addr is in no mapping. */
static int dontdump(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	CHECK(f != NULL);
	char line[512];
	int in = 0, found = -1;
	uintptr_t a = (uintptr_t)addr;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (strncmp(line, "VmFlags:", 8) == 0) {
			if (in) {
				found = strstr(line, " dd") != NULL;
				break;
			}
		} else if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) { /* a mapping's first line */
			in = a >= lo && a < hi;
		}
	}
	fclose(f);
	return found;
}

/* Secret, key and iv of both directions sit in pages marked MADV_DONTDUMP,
 * through a KeyUpdate too; rec_free wipes and unmaps them. */
static void keys_not_dumped(void)
{
	sessions(SUITE_AES_256_GCM_SHA384);
	struct rec_dir *dirs[] = { &worker.rd, &worker.wr };
	for (int k = 0; k < 2; k++) {
		CHECK(dontdump(dirs[k]->secret) == 1);
		CHECK(dontdump(dirs[k]->key) == 1);
		CHECK(dontdump(dirs[k]->iv) == 1);
	}
	CHECK(rec_update(&worker.wr) == 0 && dontdump(worker.wr.key) == 1);
	/* the check can tell: an ordinary heap buffer has no dd */
	char *heap = malloc(64);
	CHECK(heap && dontdump(heap) == 0);
	free(heap);
	done();
	CHECK(!worker.rd.secret && !worker.rd.key && !worker.wr.iv && !worker.rd.ctx);
	rec_free(&worker.rd); /* a second time is harmless */
}

/* ---- the cases ---------------------------------------------------------- */

static const struct {
	const char *name;
	void (*run)(void);
} cases[] = {
	{ "buffered_pipelined", buffered_pipelined },
	{ "buffered_partial", buffered_partial },
	{ "buffered_key_update", buffered_key_update },
	{ "flood_key_updates", flood_key_updates },
	{ "flood_under_cap", flood_under_cap },
	{ "flood_empty_records", flood_empty_records },
	{ "inner_overflow", inner_overflow },
	{ "state_pending_bound", state_pending_bound },
	{ "alert_behind_queue", alert_behind_queue },
	{ "keys_not_dumped", keys_not_dumped },
};

int main(int argc, char **argv)
{
	size_t n = sizeof cases / sizeof cases[0];
	if (argc == 2 && strcmp(argv[1], "--list") == 0) {
		for (size_t i = 0; i < n; i++)
			printf("%s\n", cases[i].name);
		return 0;
	}
	for (size_t i = 0; argc == 2 && i < n; i++)
		if (strcmp(argv[1], cases[i].name) == 0) {
			current = cases[i].name;
			cases[i].run();
			printf("ok %s\n", current);
			return 0;
		}
	fprintf(stderr, "usage: record_test --list | CASE\n");
	return 2;
}
