/*
 * ktls_bench.c - bulk send from a TLS 1.3 server, four ways: sendfile(2)
 * over kernel TLS, write(2) over kernel TLS, stage 05's own record layer
 * (record.c, libcrypto's AEAD) and OpenSSL's SSL_write. Prints a markdown
 * table: throughput, and the server's CPU time per GiB sent.
 *
 * The four run in turn, round after round (A B C D, A B C D, ...), so that
 * what the machine does meanwhile falls on all of them alike; each row gives
 * the median of its rounds and their range, and its ratio to SSL_write is
 * taken round by round. A ratio whose rounds fall on both sides of 1.0 is
 * called even.
 *
 * Each way: one loopback connection; a forked client (OpenSSL) handshakes,
 * reads everything up to the close_notify and checks the byte count. The
 * server handshakes with OpenSSL, then (except for SSL_write) exports the
 * session as stage 05's parent does (tls_export.c) and sends the file
 * itself. Only the send is timed, from the last handshake byte to the
 * client's exit; CPU is the server's user + system time (kernel TLS seals
 * inside write and sendfile, so its cost is system time).
 *
 *   ./ktls_bench [--mib N] [--rounds N (3)] [--suite TLS_AES_128_GCM_SHA256]
 *
 * Needs a kernel with TLS for the first two (`make bench-ktls` boots one);
 * without it those rows say so. Not a lesson: measurement machinery.
 * See also: sendfile(2), Documentation/networking/tls.rst, SSL_write(3),
 * getrusage(2), ktls.h, tls_export.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "../common/util.h"
#include "ktls.h"
#include "tls_export.h"

enum { M_SENDFILE, M_WRITE, M_RECORD, M_OPENSSL, M_COUNT };
static const char *const method_names[M_COUNT] = {
	"sendfile over kernel TLS", "write over kernel TLS", "stage 05 record layer (libcrypto)",
	"OpenSSL SSL_write",
};
#define CHUNK (REC_MAX_PLAIN * 4)

struct result {
	int ok;
	char why[160];
	double secs, cpu;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_self(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Every read and write on fd gives up after a while (EAGAIN): nothing here
 * waits forever on a peer that died. */
static void set_timeouts(int fd)
{
	struct timeval tv = { .tv_sec = WAIT_MS / 1000 * 3 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* ---- the client --------------------------------------------------------- */

/* Child: reads until close_notify; exits 0 only if exactly `size` bytes came. */
static _Noreturn void client(int port, const char *suite, size_t size)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	int fd = connect_loopback(port);
	if (fd >= 0)
		set_timeouts(fd);
	if (!ctx || fd < 0 || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set_ciphersuites(ctx, suite))
		_exit(3);
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1)
		_exit(4);
	static char buf[CHUNK];
	size_t got = 0;
	int r;
	while ((r = SSL_read(ssl, buf, sizeof buf)) > 0)
		got += (size_t)r;
	int clean = SSL_get_error(ssl, r) == SSL_ERROR_ZERO_RETURN;
	_exit(clean && got == size ? 0 : 5);
}

/* ---- the four ways to send ---------------------------------------------- */

/* read(2) from the file into buf, then hand it to send(); -1/errno. */
static int pump(int file, int (*send)(void *arg, const char *p, size_t n), void *arg)
{
	static char buf[CHUNK];
	ssize_t r;
	while ((r = read(file, buf, sizeof buf)) > 0)
		if (send(arg, buf, (size_t)r) < 0)
			return -1;
	return r < 0 ? -1 : 0;
}

static int send_plain(void *arg, const char *p, size_t n)
{
	return write_all(*(int *)arg, p, n);
}

static int send_ssl(void *arg, const char *p, size_t n)
{
	size_t w;
	return SSL_write_ex(arg, p, n, &w) == 1 ? 0 : (errno = EIO, -1);
}

struct rec_out {
	struct tlsx_sess *s;
	int fd;
	uint8_t *out;
};

static int send_records(void *arg, const char *p, size_t n)
{
	struct rec_out *ro = arg;
	size_t len;
	if (tlsx_seal_data(ro->s, p, n, ro->out, tlsx_seal_size(CHUNK), &len, NULL) < 0)
		return -1;
	return write_all(ro->fd, ro->out, len);
}

/* Sends the file on conn the given way, after OpenSSL's handshake on ssl. */
static int send_file(int method, SSL *ssl, struct tlsx_capture *cap, int conn, int file,
		     size_t size, char *why, size_t cap_why)
{
	if (method == M_OPENSSL) {
		int rc = pump(file, send_ssl, ssl);
		SSL_shutdown(ssl); /* our close_notify */
		return rc;
	}
	struct handoff_state st;
	const char *code;
	const char *no = tlsx_cannot_export(ssl, cap, &code);
	if (no) {
		snprintf(why, cap_why, "cannot export: %s", no);
		return -1;
	}
	tlsx_export(ssl, cap, &st);
	struct tlsx_sess *s = calloc(1, sizeof *s);
	if (!s || tlsx_sess_init(s, &st, 0) < 0) {
		free(s);
		return -1;
	}
	int rc = -1;
	uint8_t *out = malloc(tlsx_seal_size(CHUNK));
	if (method == M_RECORD && out) {
		struct rec_out ro = { s, conn, out };
		size_t len;
		rc = pump(file, send_records, &ro);
		if (rc == 0 && tlsx_seal_alert(s, 0, out, tlsx_seal_size(CHUNK), &len) == 0)
			rc = write_all(conn, out, len);
	} else if (out) {
		int k = ktls_install(conn, &s->rd, &s->wr, 0);
		if (k != KTLS_OK) {
			snprintf(why, cap_why, "no kernel TLS: %s", strerrorname_np(errno));
		} else if (method == M_WRITE) {
			rc = pump(file, send_plain, &conn);
		} else {
			rc = 0;
			for (off_t off = 0; rc == 0 && (size_t)off < size;)
				if (sendfile(conn, file, &off, size - (size_t)off) < 0 && errno != EINTR)
					rc = -1;
		}
		if (rc == 0)
			rc = ktls_send_alert(conn, 1, 0); /* close_notify */
	}
	free(out);
	tlsx_sess_free(s);
	free(s);
	return rc;
}

/* One connection: handshake, timed send, client verdict. */
static void measure(int method, SSL_CTX *ctx, const char *suite, const char *path, size_t size,
		    struct result *res)
{
	memset(res, 0, sizeof *res);
	int port, lfd = listen_loopback(0, &port);
	int file = open(path, O_RDONLY | O_CLOEXEC);
	if (lfd < 0 || file < 0) {
		snprintf(res->why, sizeof res->why, "listen/open: %s", strerrorname_np(errno));
		goto out;
	}
	pid_t pid = fork();
	if (pid == 0)
		client(port, suite, size);
	/* Bounded: a client that died before connecting must not hang us. */
	int conn = pid > 0 && wait_readable(lfd, WAIT_MS) == 1 ? accept4(lfd, NULL, NULL, SOCK_CLOEXEC) : -1;
	if (conn >= 0)
		set_timeouts(conn);
	struct tlsx_capture cap = { 0 };
	SSL *ssl = conn < 0 ? NULL : SSL_new(ctx);
	if (ssl) {
		SSL_set_fd(ssl, conn);
		SSL_set_app_data(ssl, &cap);
	}
	if (!ssl || SSL_accept(ssl) != 1) {
		snprintf(res->why, sizeof res->why, "handshake failed");
	} else {
		double t0 = now(), c0 = cpu_self();
		int rc = send_file(method, ssl, &cap, conn, file, size, res->why, sizeof res->why);
		int status;
		shutdown(conn, SHUT_WR);
		if (wait_child(pid, WAIT_MS * 30, &status) == 0) {
			pid = -1;
			res->secs = now() - t0;
			res->cpu = cpu_self() - c0;
			res->ok = rc == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
			if (rc == 0 && !res->ok)
				snprintf(res->why, sizeof res->why, "the client did not get it all");
		}
	}
	tlsx_capture_wipe(&cap);
	if (ssl) {
		SSL_set_quiet_shutdown(ssl, 1);
		SSL_free(ssl);
	}
	if (conn >= 0)
		close(conn);
	if (pid > 0)
		reap_child(pid, 0, NULL);
out:
	if (file >= 0)
		close(file);
	if (lfd >= 0)
		close(lfd);
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The median of n values (sorted in place). */
static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, by_value);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#define MAX_ROUNDS 20

int main(int argc, char **argv)
{
	long mib = 64, rounds = 3;
	const char *suite = "TLS_AES_128_GCM_SHA256";
	static const struct option opts[] = { { "mib", required_argument, NULL, 'm' },
					      { "rounds", required_argument, NULL, 'r' },
					      { "suite", required_argument, NULL, 's' },
					      { 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'm')
			mib = strtol(optarg, NULL, 10);
		else if (c == 'r')
			rounds = strtol(optarg, NULL, 10);
		else if (c == 's')
			suite = optarg;
		else
			return 2;
	}
	if (mib < 1 || mib > 4096 || rounds < 1 || rounds > MAX_ROUNDS || optind != argc) {
		fprintf(stderr, "usage: ktls_bench [--mib 1..4096] [--rounds 1..%d] [--suite NAME]\n",
			MAX_ROUNDS);
		return 2;
	}
	size_t size = (size_t)mib << 20;
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	char path[4096];
	snprintf(path, sizeof path, "%s/ktls_bench.XXXXXX", tmp);
	int fd = mkstemp(path);
	if (fd < 0) {
		fprintf(stderr, "ktls_bench: mkstemp %s: %s (%s)\n", path, strerrorname_np(errno), strerror(errno));
		return 1;
	}
	/* the file: incompressible bytes, one chunk repeated (AEADs do not care) */
	static char chunk[CHUNK];
	for (size_t i = 0; i < sizeof chunk; i++)
		chunk[i] = (char)(i * 2654435761u >> 13);
	for (size_t left = size; left > 0; left -= sizeof chunk)
		if (write_all(fd, chunk, sizeof chunk) < 0) {
			fprintf(stderr, "ktls_bench: write %s: %s\n", path, strerror(errno));
			unlink(path);
			return 1;
		}
	close(fd);
	signal(SIGPIPE, SIG_IGN);

	EVP_PKEY *pkey;
	X509 *cert;
	const char *failed = NULL;
	const struct tlsx_ctx_opts co = { .suites = suite, .tickets = 0 };
	SSL_CTX *ctx = tlsx_make_identity(&pkey, &cert) == 0 ? tlsx_server_ctx(&co, pkey, cert, &failed) : NULL;
	if (!ctx) {
		fprintf(stderr, "ktls_bench: %s failed\n", failed ? failed : "tlsx_make_identity");
		unlink(path);
		return 1;
	}
	static struct result res[MAX_ROUNDS][M_COUNT];
	for (int r = 0; r < rounds; r++)
		for (int m = 0; m < M_COUNT; m++) /* interleaved: A B C D, A B C D, ... */
			measure(m, ctx, suite, path, size, &res[r][m]);
	unlink(path);

	printf("%s, %ld MiB, loopback, %ld rounds: median (range)\n\n", suite, mib, rounds);
	printf("| server sends with | MiB/s | server CPU s/GiB | vs SSL_write |\n");
	printf("|---|---:|---:|---:|\n");
	int all = 1;
	for (int m = 0; m < M_COUNT; m++) {
		double rate[MAX_ROUNDS], cpu[MAX_ROUNDS], ratio[MAX_ROUNDS];
		const char *why = NULL;
		for (int r = 0; r < rounds; r++) {
			const struct result *x = &res[r][m], *base = &res[r][M_OPENSSL];
			if (!x->ok || !base->ok) {
				why = !x->ok ? (x->why[0] ? x->why : "failed") : "SSL_write failed";
				break;
			}
			rate[r] = (double)size / x->secs / (1 << 20);
			cpu[r] = x->cpu / ((double)size / (1 << 30));
			ratio[r] = base->secs / x->secs; /* the same bytes: the rates' ratio */
		}
		if (why) {
			printf("| %s | - | - | %s |\n", method_names[m], why);
			all = 0;
			continue;
		}
		double rm = median(rate, (int)rounds), cm = median(cpu, (int)rounds);
		double qm = median(ratio, (int)rounds); /* sorted now: [0] and [rounds-1] are the range */
		printf("| %s | %.1f (%.1f–%.1f) | %.1f | %.2f× (%.2f–%.2f)%s |\n", method_names[m], rm,
		       rate[0], rate[rounds - 1], cm, qm, ratio[0], ratio[rounds - 1],
		       m == M_OPENSSL ? "" : ratio[0] <= 1.0 && 1.0 <= ratio[rounds - 1] ? ", even" : "");
	}
	SSL_CTX_free(ctx);
	X509_free(cert);
	EVP_PKEY_free(pkey);
	return all ? 0 : 1;
}
