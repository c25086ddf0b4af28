/*
 * fuzz_record.c - libFuzzer target for the record opener (record.c).
 *
 * The input is a stream of bytes as a worker would read them from the
 * network after a handoff: records are cut out of it by their headers and
 * opened with a fixed key, KeyUpdates are followed, and whatever happens the
 * code must return an alert rather than read or write out of bounds. Most
 * inputs fail authentication, so a second half seals the input under a
 * matching key and checks that it opens back to the same bytes.
 *
 * Build and run: make fuzz-05 [FUZZ_SECONDS=60] (clang -fsanitize=fuzzer,address,undefined).
 */
#define _GNU_SOURCE
#include "record.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const uint16_t suites[3] = { SUITE_AES_128_GCM_SHA256, SUITE_AES_256_GCM_SHA384,
				    SUITE_CHACHA20_POLY1305_SHA256 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint16_t suite = suites[data[0] % 3];
	size_t sl = rec_secret_len(suite);
	uint8_t secret[REC_MAX_SECRET];
	memset(secret, 0x42, sizeof secret);
	data++;
	size--;

	/* 1. open whatever the input holds, record by record */
	struct rec_dir rd;
	if (rec_init(&rd, suite, secret, sl, 0, 0) != 0)
		abort();
	static uint8_t rec[REC_HEADER + REC_MAX_CIPHER];
	size_t off = 0;
	while (size - off >= REC_HEADER) {
		size_t body;
		if (rec_check_header(data + off, &body) != 0 || size - off - REC_HEADER < body)
			break;
		memcpy(rec, data + off, REC_HEADER + body);
		off += REC_HEADER + body;
		uint8_t type, *plain;
		size_t len;
		if (rec_open(&rd, rec, REC_HEADER + body, &type, &plain, &len) != 0)
			break;
		if (plain < rec + REC_HEADER || plain + len > rec + REC_HEADER + body)
			abort();
		int req;
		if (type == CT_HANDSHAKE && rec_parse_key_update(plain, len, &req) == 0 && rec_update(&rd) != 0)
			abort();
	}
	rec_free(&rd);

	/* 2. seal the input (up to 2^14 bytes), open it: the same bytes come back */
	struct rec_dir w, r;
	size_t n = size < REC_MAX_PLAIN ? size : REC_MAX_PLAIN, out_len;
	size_t pad = size ? data[0] % 32 : 0;
	if (n + pad > REC_MAX_PLAIN)
		pad = 0;
	if (rec_init(&w, suite, secret, sl, 5, 1) != 0 || rec_init(&r, suite, secret, sl, 5, 0) != 0)
		abort();
	if (rec_seal(&w, CT_APPLICATION_DATA, data, n, pad, rec, sizeof rec, &out_len) != 0)
		abort();
	uint8_t type, *plain;
	size_t len;
	/* an all-zero payload has its content type as the last non-zero byte: fine */
	if (rec_open(&r, rec, out_len, &type, &plain, &len) != 0 || type != CT_APPLICATION_DATA ||
	    len != n || (n && memcmp(plain, data, n) != 0))
		abort();
	rec_free(&w);
	rec_free(&r);
	return 0;
}
