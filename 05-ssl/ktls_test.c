/*
 * ktls_test.c - ktls_install on a socket that already carries kernel TLS,
 * case by case: what a process finds when it takes over a descriptor from
 * one that died part-way through the install (stage 06: a worker that dies
 * before its ack; the dispatcher hands the same socket and state to
 * another).
 *
 * Each case makes a loopback TCP connection, lets a "first holder" do part
 * of an install on the server's end (nothing, the ULP alone, TLS_TX alone,
 * both; with the state the second holder has, or one that differs in a
 * single field), then calls ktls_install with the second holder's state and
 * checks the result and errno. What is in the kernel must be that state to
 * the byte, or the socket is BROKEN: never served on a state it was not
 * sealed with.
 *
 *   ./ktls_test     one line per case, then `result: ktls_test=pass cases=N`
 *                   (exit 0), or the failing case (exit 1); on a kernel
 *                   without TLS it says so and exits 1
 *
 * Needs a kernel with TLS: tests/test_ktls.py runs it in the guest of
 * `make test-ktls`. Not a lesson: test machinery.
 * See also: ktls.h, Documentation/networking/tls.rst (TLS_TX, TLS_RX and
 * their getsockopt), net/ipv4/tcp_ulp.c (EEXIST).
 */
#define _GNU_SOURCE
#include "ktls.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/util.h"

/* What the first holder did before it died. */
enum first { NOTHING, ULP_ONLY, TX_ONLY, BOTH };
/* How its state differs from the second holder's. */
enum diff { SAME, TX_SEQ, RX_SEQ, TX_KEY, RX_IV, SUITE };

struct dirs {
	uint8_t key[2][32], iv[2][REC_IV];
	struct rec_dir rd, wr;
};

static void make_dirs(struct dirs *d, uint16_t suite, enum diff diff)
{
	memset(d, 0, sizeof *d);
	for (int i = 0; i < 32; i++) {
		d->key[0][i] = (uint8_t)(0x10 + i);
		d->key[1][i] = (uint8_t)(0x80 + i);
	}
	for (int i = 0; i < REC_IV; i++) {
		d->iv[0][i] = (uint8_t)(0x40 + i);
		d->iv[1][i] = (uint8_t)(0xc0 + i);
	}
	d->rd = (struct rec_dir){ .suite = suite, .key = d->key[0], .iv = d->iv[0], .seq = 0 };
	d->wr = (struct rec_dir){ .suite = suite, .key = d->key[1], .iv = d->iv[1], .seq = 2 };
	if (diff == TX_SEQ)
		d->wr.seq++; /* a record went out after the install */
	if (diff == RX_SEQ)
		d->rd.seq++;
	if (diff == TX_KEY)
		d->key[1][31] ^= 1;
	if (diff == RX_IV)
		d->iv[0][11] ^= 1;
}

static const struct tcase {
	const char *name;
	enum first first;
	enum diff diff;
	uint16_t suite, first_suite;
	int want, want_errno;
} cases[] = {
	{ "fresh socket: both installed", NOTHING, SAME, SUITE_AES_128_GCM_SHA256, 0, KTLS_OK, 0 },
	{ "ULP attached, nothing in: both installed", ULP_ONLY, SAME, SUITE_AES_128_GCM_SHA256, 0,
	  KTLS_ADOPTED, 0 },
	{ "TLS_TX in, the same: RX installed", TX_ONLY, SAME, SUITE_AES_256_GCM_SHA384, 0,
	  KTLS_ADOPTED, 0 },
	{ "both in, the same (AES-128-GCM)", BOTH, SAME, SUITE_AES_128_GCM_SHA256, 0, KTLS_ADOPTED, 0 },
	{ "both in, the same (ChaCha20-Poly1305)", BOTH, SAME, SUITE_CHACHA20_POLY1305_SHA256, 0,
	  KTLS_ADOPTED, 0 },
	{ "TLS_TX in, one record further", TX_ONLY, TX_SEQ, SUITE_AES_128_GCM_SHA256, 0, KTLS_BROKEN,
	  EPROTO },
	{ "both in, TLS_RX one record further", BOTH, RX_SEQ, SUITE_AES_128_GCM_SHA256, 0,
	  KTLS_BROKEN, EPROTO },
	{ "both in, another TX key", BOTH, TX_KEY, SUITE_AES_256_GCM_SHA384, 0, KTLS_BROKEN, EPROTO },
	{ "both in, another RX iv", BOTH, RX_IV, SUITE_CHACHA20_POLY1305_SHA256, 0, KTLS_BROKEN,
	  EPROTO },
	{ "both in, another suite", BOTH, SUITE, SUITE_AES_128_GCM_SHA256, SUITE_AES_256_GCM_SHA384,
	  KTLS_BROKEN, EPROTO },
};

static const char *status_name(int s)
{
	return s == KTLS_OK ? "OK" : s == KTLS_NO_ULP ? "NO_ULP" : s == KTLS_BROKEN ? "BROKEN"
	     : s == KTLS_ADOPTED ? "ADOPTED" : "?";
}

/* One case on a fresh connection: 1 if it went as the table says. */
static int run_case(const struct tcase *t)
{
	int port, lfd = listen_loopback(0, &port), cfd = lfd < 0 ? -1 : connect_loopback(port);
	int fd = cfd < 0 ? -1 : accept(lfd, NULL, NULL);
	if (fd < 0) {
		printf("  %s: cannot make a loopback connection: %s\n", t->name, strerrorname_np(errno));
		if (cfd >= 0)
			close(cfd);
		if (lfd >= 0)
			close(lfd);
		return 0;
	}
	/* The first holder: part of an install, with its own state. */
	struct dirs first, second;
	make_dirs(&first, t->first_suite ? t->first_suite : t->suite, t->diff == SUITE ? SAME : t->diff);
	make_dirs(&second, t->suite, SAME);
	int ok = 1;
	if (t->first == ULP_ONLY)
		ok = setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") == 0;
	else if (t->first == TX_ONLY)
		ok = ktls_install(fd, &first.rd, &first.wr, KTLS_TEST_REFUSE_RX) == KTLS_BROKEN;
	else if (t->first == BOTH)
		ok = ktls_install(fd, &first.rd, &first.wr, 0) == KTLS_OK;
	if (!ok) {
		printf("  %s: the first holder's part failed: %s\n", t->name, strerrorname_np(errno));
	} else {
		errno = 0;
		int got = ktls_install(fd, &second.rd, &second.wr, 0);
		int e = got == KTLS_BROKEN ? errno : 0;
		ok = got == t->want && e == t->want_errno;
		printf("  %s: %s%s%s%s\n", t->name, status_name(got), e ? " (" : "",
		       e ? strerrorname_np(e) : "", e ? ")" : "");
		if (!ok)
			printf("    expected %s%s%s\n", status_name(t->want), t->want_errno ? " with " : "",
			       t->want_errno ? strerrorname_np(t->want_errno) : "");
	}
	close(fd);
	close(cfd);
	close(lfd);
	return ok;
}

int main(void)
{
	char why[256] = "";
	int avail = ktls_available(why, sizeof why);
	if (avail != 1) {
		fprintf(stderr, "ktls_test: no kernel TLS here (%s)\n",
			avail < 0 ? strerrorname_np(errno) : why);
		return 1;
	}
	int n = (int)(sizeof cases / sizeof cases[0]), failed = 0;
	printf("ktls_install after a first holder:\n");
	for (int i = 0; i < n; i++)
		failed += !run_case(&cases[i]);
	if (failed) {
		printf("result: ktls_test=fail failed=%d cases=%d\n", failed, n);
		return 1;
	}
	printf("result: ktls_test=pass cases=%d\n", n);
	return 0;
}
