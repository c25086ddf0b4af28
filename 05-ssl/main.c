/*
 * main.c - stage 05's command line and --serve loop.
 *
 * Run it:    ./ssl_handoff --help
 *            ./ssl_handoff --serve --mode after-handshake [--port N]
 * See also: ssl_handoff.c (the lesson), demo.c (the narrated demo).
 */
#define _GNU_SOURCE
#include "../common/cli.h"
#include "ktls.h"
#include "ssl05.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

const char *const mode_names[] = { "naive", "before-handshake", "after-handshake", NULL };
static const char *const ktls_names[] = { "auto", "off", "force", NULL };

static const char usage[] =
	"usage: ssl_handoff [--mode MODE] [options] [--trace FILE] [--mermaid]\n"
	"       ssl_handoff --serve [--port N] [--mode MODE] [options]\n"
	"       ssl_handoff --selftest\n"
	"Stage 05: handing off a TLS connection to a pre-forked worker.\n"
	"  --mode MODE          naive | before-handshake | after-handshake\n"
	"                       (demo default: all three; --serve default: after-handshake)\n"
	"  --workers N          pre-forked workers, 1..16 (default 2)\n"
	"  --ktls MODE          auto | off | force: kernel TLS for handed-off sessions\n"
	"  --ciphersuites LIST  TLS 1.3 suites, OpenSSL syntax (TLS_AES_128_GCM_SHA256:...)\n"
	"  --tickets N          session tickets the server sends, 0..10 (default 2)\n"
	"  --cert FILE --key FILE  PEM certificate and key (default: self-signed, made in memory)\n"
	"  --rekey-after N      the worker sends its own KeyUpdate after N records under one key\n"
	"                       (default: the suite's AEAD limit)\n"
	"  --bad-seq            break it: hand over a write sequence number one too low\n"
	"  --read-ahead         break it: let OpenSSL read ahead, so the handoff must fail closed\n"
	"  --selftest           known-answer tests (RFC 8448 section 3) and exit\n" COMMON_USAGE;

static int serve(struct nar *n, struct opts *o, SSL_CTX *ctx, int port)
{
	int lfd = listen_loopback(port, &port);
	if (lfd < 0)
		die("socket/bind/listen on 127.0.0.1:%d", port);
	int sfd = signal_fd(0);
	if (sfd < 0)
		die("signalfd");
	announce_listening(port);
	say_ktls(n, o);
	struct pool p = { 0 };
	start_workers(n, o, ctx, &p, lfd, sfd);
	say(n, "mode %s: every connection goes to a worker", mode_names[o->mode]);
	for (;;) {
		struct pollfd pf[2 + MAX_WORKERS] = { { .fd = lfd, .events = POLLIN },
						       { .fd = sfd, .events = POLLIN } };
		for (int i = 0; i < p.n; i++)
			pf[2 + i] = (struct pollfd){ .fd = p.chan[i], .events = POLLIN };
		if (poll(pf, (nfds_t)(2 + p.n), -1) < 0) { /* a client, a worker or a signal */
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (pf[1].revents)
			break;
		for (int i = 0; i < p.n; i++)
			if (p.chan[i] >= 0 && pf[2 + i].revents && read_done(&p, i) < 0)
				say(n, "worker %d is gone", i);
		if (!(pf[0].revents & POLLIN))
			continue;
		int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (conn < 0)
			continue;
		parent_handle(n, o, ctx, &p, conn);
	}
	say(n, "shutting down: closing the workers' channels");
	for (int i = 0; i < p.n; i++)
		if (p.pid[i] > 0)
			kill(p.pid[i], SIGTERM);
	stop_workers(&p);
	close(sfd);
	close(lfd);
	return EXIT_LESSON;
}

int selftest(void); /* selftest.c */

int main(int argc, char **argv)
{
	enum { OPT_MODE = OPT_STAGE, OPT_WORKERS, OPT_KTLS, OPT_SUITES, OPT_TICKETS, OPT_CERT, OPT_KEY,
	       OPT_BADSEQ, OPT_READAHEAD, OPT_REKEY, OPT_SELFTEST };
	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "mode", required_argument, NULL, OPT_MODE },
		{ "workers", required_argument, NULL, OPT_WORKERS },
		{ "ktls", required_argument, NULL, OPT_KTLS },
		{ "ciphersuites", required_argument, NULL, OPT_SUITES },
		{ "tickets", required_argument, NULL, OPT_TICKETS },
		{ "cert", required_argument, NULL, OPT_CERT },
		{ "key", required_argument, NULL, OPT_KEY },
		{ "bad-seq", no_argument, NULL, OPT_BADSEQ },
		{ "read-ahead", no_argument, NULL, OPT_READAHEAD },
		{ "rekey-after", required_argument, NULL, OPT_REKEY },
		{ "selftest", no_argument, NULL, OPT_SELFTEST },
		{ 0 },
	};
	struct common_opts co = { 0 };
	struct opts o = { .mode = -1, .workers = 2, .ktls = KTLS_AUTO, .tickets = 2, .go_fd = -1 };
	int c, self = 0;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&co, c, optarg, usage))
			continue;
		switch (c) {
		case OPT_MODE: o.mode = parse_choice("--mode", optarg, mode_names); break;
		case OPT_WORKERS: o.workers = (int)parse_long("--workers", optarg, 1, MAX_WORKERS); break;
		case OPT_KTLS: o.ktls = parse_choice("--ktls", optarg, ktls_names); break;
		case OPT_SUITES: o.suites = optarg; break;
		case OPT_TICKETS: o.tickets = (int)parse_long("--tickets", optarg, 0, 10); break;
		case OPT_CERT: o.cert = optarg; break;
		case OPT_KEY: o.key = optarg; break;
		case OPT_BADSEQ: o.bad_seq = 1; break;
		case OPT_READAHEAD: o.read_ahead = 1; break;
		case OPT_REKEY: o.rekey_after = (uint64_t)parse_long("--rekey-after", optarg, 2, 1L << 30); break;
		case OPT_SELFTEST: self = 1; break;
		}
	}
	common_done(&co, argc, argv, usage);
	if (!o.cert != !o.key)
		usage_error("--cert and --key go together");
	if (self)
		return selftest();
	signal(SIGPIPE, SIG_IGN); /* a client that left is an EPIPE, handled where it happens */

	char ulps[256] = "";
	int avail = ktls_available(ulps, sizeof ulps);
	if (o.ktls == KTLS_FORCE && avail != 1) {
		fprintf(stderr, "%s: --ktls force: no kernel TLS here (%s)\n",
			program_invocation_short_name, avail < 0 ? strerror(errno) : ulps);
		return EXIT_RUNTIME;
	}
	o.ktls_ok = o.ktls != KTLS_OFF && avail == 1;

	struct nar n;
	if (nar_open(&n, "parent", co.trace, co.mermaid) < 0)
		die("open trace file");
	snprintf(o.ulps, sizeof o.ulps, "%s", ulps);
	if (co.serve && o.mode < 0)
		o.mode = MODE_AFTER;
	EVP_PKEY *pkey;
	X509 *cert;
	if (tlsx_make_identity(&pkey, &cert) < 0)
		die_ssl("building the self-signed certificate");
	SSL_CTX *ctx = server_ctx(&o, pkey, cert);
	int rc;
	if (co.serve) {
		rc = serve(&n, &o, ctx, co.port);
	} else {
		rc = demo(&n, &o, ctx, cert, o.mode < 0 ? MODE_ALL : o.mode);
	}
	if (co.mermaid)
		nar_mermaid(&n, stdout);
	nar_close(&n);
	SSL_CTX_free(ctx);
	X509_free(cert);
	EVP_PKEY_free(pkey);
	return rc;
}
