/*
 * fuzz_http.c - libFuzzer target for stage 06's HTTP request parser
 * (http.c): whatever a client sends, http_parse reads only inside the
 * buffer (AddressSanitizer) and its answer is consistent:
 *   HTTP_MORE     no "\r\n\r\n" yet, and fewer than HTTP_REQ_MAX bytes;
 *   HTTP_REQUEST  the request ends with "\r\n\r\n" within the buffer and
 *                 within HTTP_REQ_MAX, the target is a "/..." inside it,
 *                 and the request alone (without what is pipelined after
 *                 it) parses to exactly the same answer;
 *   HTTP_BAD      anything else.
 * The responses are written into a buffer as large as the input's first
 * byte says: they fit, or the writer says 0.
 *
 * Build and run: make fuzz-06 [FUZZ_SECONDS=60] (or make fuzz: every target).
 */
#define _GNU_SOURCE
#include "http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void need(int ok)
{
	if (!ok)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	size_t used = 0, tlen = 0, used2 = 0, tlen2 = 0;
	int ka = -1, ka2 = -1;
	const char *t = NULL, *t2 = NULL;
	int r = http_parse(buf, size, &used, &ka, &t, &tlen);
	switch (r) {
	case HTTP_MORE:
		need(size < HTTP_REQ_MAX && !memmem(buf, size, "\r\n\r\n", 4));
		break;
	case HTTP_REQUEST:
		need(used >= 4 && used <= size && used <= HTTP_REQ_MAX);
		need(memcmp(buf + used - 4, "\r\n\r\n", 4) == 0);
		need(memmem(buf, used - 1, "\r\n\r\n", 4) == NULL); /* the first blank line */
		need(t > buf && tlen > 0 && t + tlen < buf + used && *t == '/');
		need(ka == 0 || ka == 1);
		need(http_parse(buf, used, &used2, &ka2, &t2, &tlen2) == HTTP_REQUEST);
		need(used2 == used && ka2 == ka && t2 == t && tlen2 == tlen);
		break;
	default:
		need(r == HTTP_BAD);
	}

	/* one response into a buffer as large as the first byte says */
	static char out[256];
	static const int status[] = { 400, 408, 503 };
	size_t cap = size ? data[0] : 0, n = http_ok(out, cap, 4242, (int)(cap & 1));
	need(n == 0 || n < cap);
	n = http_error(out, cap, status[cap % 3]);
	need(n == 0 || n < cap);
	return 0;
}
