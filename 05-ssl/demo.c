/*
 * demo.c - stage 05's narrated demo: for each mode, a listener, two
 * pre-forked workers and a built-in client (OpenSSL, trusting exactly the
 * in-memory certificate), one connection told step by step.
 *
 * Run it: ./ssl_handoff [--mode MODE] [--trace FILE] [--mermaid]
 * See also: SSL_connect(3), SSL_shutdown(3), ssl_handoff.c (the lesson).
 */
#define _GNU_SOURCE
#include "../common/cli.h"
#include "../common/escape.h"
#include "ssl05.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509.h>

/* ---- the demo's client -------------------------------------------------- */

static int wait_go(int go_rd)
{
	char g;
	return read_within(go_rd, &g, 1, WAIT_MS * 3) == 1 ? 0 : -1;
}

/* Exit status: 0 both replies came from the expected roles, 3 the connection
 * failed (what naive mode must show), 1 anything else. */
/* --read-ahead: both lines in ONE write(2), straight after the handshake,
 * so they reach the server together and its OpenSSL, reading ahead, takes
 * the second record in with the first. The records are sealed into a memory
 * BIO, then written at once. -1 on failure. */
static int send_both(SSL *ssl, int fd, const char *const *lines)
{
	BIO *sock = SSL_get_wbio(ssl), *mem = BIO_new(BIO_s_mem());
	if (!mem || !BIO_up_ref(sock)) {
		BIO_free(mem);
		return -1;
	}
	SSL_set0_wbio(ssl, mem); /* SSL_write now seals into memory */
	int ok = SSL_write(ssl, lines[0], (int)strlen(lines[0])) > 0 &&
		 SSL_write(ssl, lines[1], (int)strlen(lines[1])) > 0;
	char *data;
	long len = BIO_get_mem_data(mem, &data);
	if (ok && len > 0 && write_all(fd, data, (size_t)len) < 0)
		ok = 0;
	SSL_set0_wbio(ssl, sock); /* back to the socket; frees mem, takes our reference */
	return ok ? 0 : -1;
}

static int client(struct nar *n, int port, int go_rd, X509 *cert, int mode, int both)
{
	char why[128];
	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
	if (!cctx || !SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION) ||
	    !X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), cert))
		die_ssl("client SSL_CTX");
	SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL); /* the server's self-signed cert, verified */
	ev(n, "connect", "parent", "port=%d", port);
	int fd = connect_loopback(port);
	if (fd < 0)
		die("client: connect");
	set_timeouts(fd, WAIT_MS * 3);
	SSL *ssl = SSL_new(cctx);
	if (!ssl || !SSL_set_fd(ssl, fd) || !SSL_set1_host(ssl, "localhost"))
		die_ssl("client SSL_new");
	int rc = 1;
	if (SSL_connect(ssl) != 1) {
		say(n, "handshake failed: %s", ssl_reason(why, sizeof why));
		goto out;
	}
	say(n, "handshake done (%s, certificate verified for localhost)", SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
	const char *lines[] = { "hello, who is there?\n", "and who answers now?\n" };
	/* --read-ahead: the parent keeps the connection, so it answers both */
	const char *want[] = { mode == MODE_AFTER ? "parent" : "worker", both ? "parent" : "worker" };
	for (int i = 0; i < 2; i++) {
		if ((i == 0 || !both) && wait_go(go_rd) < 0) {
			say(n, "the server never got ready");
			goto out;
		}
		ev(n, "send", want[i], "bytes=%zu", strlen(lines[i]));
		char reply[256];
		int got = 1;
		if (both && i == 0) {
			say(n, "sending both lines in one write(2), right after the handshake");
			got = send_both(ssl, fd, lines) < 0 ? -1 : 1;
		} else if (!both) {
			got = SSL_write(ssl, lines[i], (int)strlen(lines[i]));
		}
		if (got > 0)
			got = SSL_read(ssl, reply, sizeof reply - 1);
		if (got <= 0) {
			say(n, "my connection failed: %s", ssl_reason(why, sizeof why));
			ev(n, "tls_error", NULL, "reason=%s", why);
			rc = 3;
			goto out;
		}
		reply[got] = '\0';
		reply[strcspn(reply, "\n")] = '\0';
		char shown[ESCAPED_CAP(sizeof reply)];
		say(n, "sent \"%.*s\", got back \"%s\"", (int)strlen(lines[i]) - 1, lines[i],
		    escape_bytes(shown, sizeof shown, reply, strlen(reply), 0));
		char role[16] = "";
		if (sscanf(reply, "[%15s", role) != 1 || strcmp(role, want[i]) != 0) {
			say(n, "expected an answer from the %s", want[i]);
			goto out;
		}
	}
	if (wait_go(go_rd) < 0)
		goto out;
	ev(n, "close_notify", "worker", NULL);
	say(n, "SSL_shutdown(): close_notify sent, waiting for the server's");
	int s = SSL_shutdown(ssl);
	if (s == 0)
		s = SSL_shutdown(ssl); /* waits for the peer's close_notify */
	if (s == 1) {
		say(n, "the server answered close_notify: a clean TLS close");
		rc = 0;
	} else {
		say(n, "no close_notify from the server: %s", ssl_reason(why, sizeof why));
	}
out:
	SSL_free(ssl);
	SSL_CTX_free(cctx);
	close(fd);
	return rc;
}

/* ---- the demo ----------------------------------------------------------- */

/* One mode, one connection, told step by step. Returns 1 if the lesson's
 * outcome happened (naive: the client failed; else: it was served). */
static int demo_mode(struct nar *n, struct opts *o, SSL_CTX *ctx, X509 *cert, int mode)
{
	o->mode = mode;
	say(n, "==== mode %s ====", mode_names[mode]);
	ev(n, "demo", NULL, "mode=%s", mode_names[mode]);
	int port, lfd = listen_loopback(0, &port);
	if (lfd < 0)
		die("socket/bind/listen on 127.0.0.1");
	int gp[2];
	if (pipe2(gp, O_CLOEXEC) < 0)
		die("pipe2");
	o->go_fd = gp[1];
	struct pool p = { 0 };
	start_workers(n, o, ctx, &p, lfd, -1);

	pid_t cli = fork();
	if (cli < 0)
		die("fork");
	if (cli == 0) {
		n->role = "client";
		close(gp[1]);
		close(lfd);
		for (int i = 0; i < p.n; i++)
			close(p.chan[i]);
		int rc = client(n, port, gp[0], cert, mode, mode == MODE_AFTER && o->read_ahead);
		close(gp[0]);
		nar_close(n);
		SSL_CTX_free(ctx);
		_exit(rc);
	}
	close(gp[0]);
	int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (conn < 0)
		die("accept");
	say(n, "accept() -> fd %d", conn);
	ev(n, "accept", NULL, "fd=%d", conn);
	parent_handle(n, o, ctx, &p, conn);

	/* Wait for the worker's "done" (or its channel closing), bounded. */
	for (int i = 0; i < p.n; i++)
		while (p.chan[i] >= 0 && p.busy[i] > 0) {
			if (wait_readable(p.chan[i], WAIT_MS * 4) <= 0 || read_done(&p, i) < 0)
				break;
		}
	int st;
	int ok = reap_child(cli, WAIT_MS * 4, &st) == 0 && WIFEXITED(st);
	int code = ok ? WEXITSTATUS(st) : -1;
	stop_workers(&p);
	close(gp[1]);
	o->go_fd = -1;
	close(lfd);
	/* naive, and --bad-seq after the handshake, must break the client */
	int lesson = mode == MODE_NAIVE || (mode == MODE_AFTER && o->bad_seq) ? code == 3 : code == 0;
	say(n, "mode %s: the client %s", mode_names[mode],
	    code == 0 && mode == MODE_AFTER && o->read_ahead
		    ? "was served to the end by the parent: OpenSSL had read ahead, so the "
		      "handoff failed closed"
	    : code == 0 ? "was served to the end, with a clean close_notify"
		      : code != 3 ? "had trouble"
		      : mode == MODE_NAIVE ? "failed: the worker could not speak its TLS session"
					   : "failed: the worker wrote under a sequence number - a nonce - "
					     "already used with this key");
	return lesson;
}

/* --ktls auto: whether handed-off sessions go to the kernel, and why; said
 * once, at start (o->ulps says what the probe in ktls.c found). */
void say_ktls(const struct nar *n, const struct opts *o)
{
	if (o->ktls != KTLS_AUTO || !(o->mode == MODE_AFTER || o->mode < 0))
		return;
	if (o->ktls_ok)
		say(n, "kernel TLS: available here (%s); handed-off sessions run in the kernel", o->ulps);
	else
		say(n, "kernel TLS: not available here (%s); handed-off sessions run on the worker's "
		       "own record layer", o->ulps);
}

int demo(struct nar *n, struct opts *o, SSL_CTX *ctx, X509 *cert, int mode)
{
	say_ktls(n, o);
	int from = mode == MODE_ALL ? MODE_NAIVE : mode, to = mode == MODE_ALL ? MODE_AFTER : mode;
	int ok = 1;
	char result[256] = "result:";
	for (int m = from; m <= to; m++) {
		int lesson = demo_mode(n, o, ctx, cert, m);
		ok &= lesson;
		size_t l = strlen(result);
		snprintf(result + l, sizeof result - l, " %s=%s", mode_names[m],
			 !lesson ? "unexpected"
			 : m == MODE_NAIVE || (m == MODE_AFTER && o->bad_seq) ? "client_failed"
			 : m == MODE_AFTER && o->read_ahead ? "kept_by_parent" : "served");
	}
	out_line("%s", result);
	return ok ? EXIT_LESSON : EXIT_RUNTIME;
}
