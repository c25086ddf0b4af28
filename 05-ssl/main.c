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
#include "sni.h"
#include "ssl05.h"

#include <errno.h>
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
	"  --route-by-sni       --serve, before-handshake: peek at the ClientHello's server_name\n"
	"  --route NAME=N       ... and send NAME to worker N (0-based; repeatable); others\n"
	"                       (no name, an unknown one) go round-robin\n"
	"  --selftest           known-answer tests (RFC 8448 section 3) and exit\n" COMMON_USAGE;

int selftest(void); /* selftest.c */

/* --route NAME=N: a server_name and the worker index it goes to. */
static void add_route(struct opts *o, char *arg)
{
	char *eq = strrchr(arg, '=');
	if (!eq || eq == arg || eq - arg > SNI_MAX_NAME)
		usage_error("--route: expected NAME=N, got '%s'", arg);
	if (o->nroutes == MAX_ROUTES)
		usage_error("--route: at most %d routes", MAX_ROUTES);
	*eq = '\0';
	o->routes[o->nroutes].name = arg;
	o->routes[o->nroutes].worker = (int)parse_long("--route", eq + 1, 0, MAX_WORKERS - 1);
	o->nroutes++;
}

int main(int argc, char **argv)
{
	enum { OPT_MODE = OPT_STAGE, OPT_WORKERS, OPT_KTLS, OPT_SUITES, OPT_TICKETS, OPT_CERT, OPT_KEY,
	       OPT_BADSEQ, OPT_READAHEAD, OPT_REKEY, OPT_SELFTEST, OPT_BYSNI, OPT_ROUTE };
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
		{ "route-by-sni", no_argument, NULL, OPT_BYSNI },
		{ "route", required_argument, NULL, OPT_ROUTE },
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
		case OPT_BYSNI: o.route_by_sni = 1; break;
		case OPT_ROUTE: add_route(&o, optarg); break;
		}
	}
	common_done(&co, argc, argv, usage);
	if (!o.cert != !o.key)
		usage_error("--cert and --key go together");
	if ((o.route_by_sni || o.nroutes) && (!co.serve || o.mode != MODE_BEFORE || !o.route_by_sni))
		usage_error("--route-by-sni (and --route) go with --serve --mode before-handshake");
	for (int i = 0; i < o.nroutes; i++)
		if (o.routes[i].worker >= o.workers)
			usage_error("--route %s=%d: there are workers 0..%d", o.routes[i].name,
				    o.routes[i].worker, o.workers - 1);
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
