/*
 * selftest.c - `ssl_handoff --selftest`: known answers for record.c and
 * handoff_state.c, so the key schedule is checked against numbers nobody in
 * this project computed.
 *
 * The vectors are RFC 8448 section 3 ("Simple 1-RTT Handshake",
 * TLS_AES_128_GCM_SHA256): four traffic secrets with the key and iv the RFC
 * derives from each (HKDF-Expand-Label, RFC 8446 7.3), then the client's
 * first application_data record (sequence 0) and the server's (sequence 1,
 * after its NewSessionTicket), both carrying the bytes 00 01 ... 31.
 * Then the edges: a flipped bit, a sequence number at the end of its range,
 * a KeyUpdate on both sides, and the state codec's strictness.
 *
 * Prints one line per check and `result: selftest=pass checks=N` (exit 0),
 * or names the failing check (exit 1).
 */
#define _GNU_SOURCE
#include "../common/narrate.h"
#include "handoff_state.h"
#include "record.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int selftest(void);

static size_t hex(const char *s, uint8_t *out, size_t cap)
{
	size_t n = 0;
	while (*s && n < cap) {
		unsigned v;
		while (*s == ' ')
			s++;
		if (!*s || sscanf(s, "%2x", &v) != 1)
			break;
		out[n++] = (uint8_t)v;
		s += 2;
	}
	return n;
}

static int checks, failed;

static void check(int ok, const char *what)
{
	checks++;
	if (!ok)
		failed++;
	out_line("selftest: %-58s %s", what, ok ? "ok" : "FAILED");
}

/* RFC 8448 section 3. */
static const struct {
	const char *name, *secret, *key, *iv;
} kat[] = {
	{ "server handshake traffic key/iv",
	  "b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38",
	  "3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc", "5d 31 3e b2 67 12 76 ee 13 00 0b 30" },
	{ "client handshake traffic key/iv",
	  "b3 ed db 12 6e 06 7f 35 a7 80 b3 ab f4 5e 2d 8f 3b 1a 95 07 38 f5 2e 96 00 74 6a 0e 27 a5 5a 21",
	  "db fa a6 93 d1 76 2c 5b 66 6a f5 d9 50 25 8d 01", "5b d3 c7 1b 83 6e 0b 76 bb 73 26 5f" },
	{ "server application traffic key/iv",
	  "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43",
	  "9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56", "cf 78 2b 88 dd 83 54 9a ad f1 e9 84" },
	{ "client application traffic key/iv",
	  "9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5",
	  "17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51", "5b 78 92 3d ee 08 57 90 33 e5 23 d9" },
};

static const char client_record[] =
	"17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea"
	"42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b"
	"62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4";
static const char server_record[] =
	"17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc"
	"32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8"
	"fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d";

static void kat_keys(void)
{
	for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
		uint8_t secret[32], key[16], iv[12];
		hex(kat[i].secret, secret, sizeof secret);
		hex(kat[i].key, key, sizeof key);
		hex(kat[i].iv, iv, sizeof iv);
		struct rec_dir d;
		int ok = rec_init(&d, SUITE_AES_128_GCM_SHA256, secret, 32, 0, 1) == 0 &&
			 d.key_len == 16 && memcmp(d.key, key, 16) == 0 && memcmp(d.iv, iv, 12) == 0;
		rec_free(&d);
		char what[80];
		snprintf(what, sizeof what, "RFC 8448 3: %s", kat[i].name);
		check(ok, what);
	}
}

static void kat_records(void)
{
	uint8_t payload[50], secret[32], want[72], out[128];
	for (size_t i = 0; i < sizeof payload; i++)
		payload[i] = (uint8_t)i;
	size_t len = 0;

	/* the client's record at sequence 0: seal must give the RFC's bytes */
	struct rec_dir w, r;
	hex(kat[3].secret, secret, sizeof secret);
	hex(client_record, want, sizeof want);
	int ok = rec_init(&w, SUITE_AES_128_GCM_SHA256, secret, 32, 0, 1) == 0 &&
		 rec_seal(&w, CT_APPLICATION_DATA, payload, sizeof payload, 0, out, sizeof out, &len) == 0 &&
		 len == 72 && memcmp(out, want, 72) == 0 && w.seq == 1;
	rec_free(&w);
	check(ok, "RFC 8448 3: client application_data record, seq 0 (seal)");

	/* the server's record at sequence 1: open must give 00..31 back */
	hex(kat[2].secret, secret, sizeof secret);
	hex(server_record, out, sizeof out);
	uint8_t type = 0, *plain = NULL;
	size_t plain_len = 0;
	ok = rec_init(&r, SUITE_AES_128_GCM_SHA256, secret, 32, 1, 0) == 0 &&
	     rec_open(&r, out, 72, &type, &plain, &plain_len) == 0 && type == CT_APPLICATION_DATA &&
	     plain_len == 50 && memcmp(plain, payload, 50) == 0;
	rec_free(&r);
	check(ok, "RFC 8448 3: server application_data record, seq 1 (open)");

	/* the same record with one bit flipped, and at the wrong sequence number */
	int alerts[3];
	for (int k = 0; k < 3; k++) {
		hex(server_record, out, sizeof out);
		if (k == 0)
			out[40] ^= 0x01; /* the ciphertext */
		if (k == 1)
			out[2] ^= 0x01; /* the header: AAD */
		rec_init(&r, SUITE_AES_128_GCM_SHA256, secret, 32, k == 2 ? 0 : 1, 0);
		alerts[k] = rec_open(&r, out, 72, &type, &plain, &plain_len);
		rec_free(&r);
	}
	check(alerts[0] == ALERT_BAD_RECORD_MAC, "a flipped ciphertext bit -> bad_record_mac");
	check(alerts[1] == ALERT_BAD_RECORD_MAC, "a flipped header bit (AAD) -> bad_record_mac");
	check(alerts[2] == ALERT_BAD_RECORD_MAC, "the right record at the wrong seq -> bad_record_mac");
}

static void edges(void)
{
	uint8_t secret[48], out[128], *plain;
	memset(secret, 0x5a, sizeof secret);
	struct rec_dir w, r;
	size_t len, plain_len;
	uint8_t type;

	/* sequence numbers never wrap */
	errno = 0;
	check(rec_init(&w, SUITE_AES_128_GCM_SHA256, secret, 32, UINT64_MAX, 1) < 0 && errno == EINVAL,
	      "state with seq 2^64-1 is refused");
	rec_init(&w, SUITE_AES_128_GCM_SHA256, secret, 32, UINT64_MAX - 1, 1);
	int first = rec_seal(&w, CT_APPLICATION_DATA, "x", 1, 0, out, sizeof out, &len);
	errno = 0;
	int second = rec_seal(&w, CT_APPLICATION_DATA, "x", 1, 0, out, sizeof out, &len);
	check(first == 0 && second < 0 && errno == EOVERFLOW, "seal at 2^64-2 works, then EOVERFLOW");
	rec_free(&w);

	/* every suite: a KeyUpdate on both sides keeps them in step */
	const uint16_t suites[] = { SUITE_AES_128_GCM_SHA256, SUITE_AES_256_GCM_SHA384,
				    SUITE_CHACHA20_POLY1305_SHA256 };
	for (int i = 0; i < 3; i++) {
		size_t sl = rec_secret_len(suites[i]);
		int ok = rec_init(&w, suites[i], secret, sl, 7, 1) == 0 &&
			 rec_init(&r, suites[i], secret, sl, 7, 0) == 0 && rec_update(&w) == 0 &&
			 rec_update(&r) == 0 && w.seq == 0 &&
			 rec_seal(&w, CT_APPLICATION_DATA, "hi", 2, 3, out, sizeof out, &len) == 0 &&
			 rec_open(&r, out, len, &type, &plain, &plain_len) == 0 && plain_len == 2 &&
			 memcmp(plain, "hi", 2) == 0 && type == CT_APPLICATION_DATA &&
			 memcmp(w.secret, secret, sl) != 0;
		rec_free(&w);
		rec_free(&r);
		char what[80];
		snprintf(what, sizeof what, "%s: KeyUpdate both sides, padded record", rec_suite_name(suites[i]));
		check(ok, what);
	}

	/* size limits */
	static uint8_t big[REC_HEADER + REC_MAX_CIPHER + 64];
	rec_init(&w, SUITE_AES_128_GCM_SHA256, secret, 32, 0, 1);
	check(rec_seal(&w, CT_APPLICATION_DATA, big, REC_MAX_PLAIN + 1, 0, big, sizeof big, &len) < 0 &&
		      errno == EMSGSIZE,
	      "seal of 2^14+1 bytes is refused");
	rec_free(&w);
	uint8_t hdr[5] = { CT_APPLICATION_DATA, 3, 3, (REC_MAX_CIPHER + 1) >> 8, (REC_MAX_CIPHER + 1) & 0xff };
	size_t body;
	check(rec_check_header(hdr, &body) == ALERT_RECORD_OVERFLOW, "header length 2^14+257 -> record_overflow");
	hdr[0] = CT_HANDSHAKE;
	hdr[3] = 0;
	hdr[4] = 40;
	check(rec_check_header(hdr, &body) == ALERT_UNEXPECTED_MESSAGE, "outer type handshake -> unexpected_message");
	const uint8_t ku_bad[5] = { HS_KEY_UPDATE, 0, 0, 1, 2 };
	int req;
	check(rec_parse_key_update(ku_bad, 5, &req) == ALERT_ILLEGAL_PARAMETER, "KeyUpdate request 2 -> illegal_parameter");
}

static void codec(void)
{
	struct handoff_state *s = calloc(1, sizeof *s), *t = calloc(1, sizeof *t);
	uint8_t *buf = malloc(HS_MAX_ENCODED + 1);
	if (!s || !t || !buf) {
		check(0, "memory");
		goto out;
	}
	s->suite = SUITE_AES_256_GCM_SHA384;
	s->rd.secret_len = s->wr.secret_len = 48;
	memset(s->rd.secret, 1, 48);
	memset(s->wr.secret, 2, 48);
	s->rd.seq = 1;
	s->wr.seq = 3;
	s->pending_len = 7;
	memcpy(s->pending, "second\n", 7);
	size_t len;
	int ok = hs_encode(s, buf, HS_MAX_ENCODED, &len) == 0 && hs_decode(t, buf, len) == 0 &&
		 t->suite == s->suite && t->rd.seq == 1 && t->wr.seq == 3 && t->pending_len == 7 &&
		 memcmp(t->wr.secret, s->wr.secret, 48) == 0 && memcmp(t->pending, "second\n", 7) == 0;
	check(ok, "state: encode then decode gives it back");
	check(hs_decode(t, buf, len - 1) < 0 && errno == EBADMSG, "state: one byte short -> refused");
	buf[len] = 0;
	check(hs_decode(t, buf, len + 1) < 0, "state: one byte too many -> refused");
	buf[7] = 32; /* the read secret's length, wrong for SHA-384 */
	check(hs_decode(t, buf, len) < 0, "state: secret length not the suite's -> refused");
	s->wr.seq = UINT64_MAX;
	check(hs_encode(s, buf, HS_MAX_ENCODED, &len) < 0, "state: seq 2^64-1 is not encoded");
out:
	if (s)
		hs_wipe(s);
	free(s);
	free(t);
	free(buf);
}

int selftest(void)
{
	kat_keys();
	kat_records();
	edges();
	codec();
	if (failed)
		out_line("result: selftest=FAILED checks=%d failed=%d", checks, failed);
	else
		out_line("result: selftest=pass checks=%d", checks);
	return failed ? 1 : 0;
}
