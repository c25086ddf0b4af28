/*
 * main.c - stage 06: the command line of ./handoff_server (options, limits,
 * the --tls identity) and the choice between the demo and --serve.
 *
 * Run it:  ./handoff_server --help
 * See also: handoff_server.c (the lesson), getrlimit(2), ../05-ssl/tls_export.h.
 */
#define _GNU_SOURCE
#include "../05-ssl/ktls.h"
#include "../05-ssl/tls_export.h"
#include "../common/cli.h"
#include "../common/util.h"
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

const char *const model_names[] = { "handoff", "fork-per-conn", "reuseport", "proxy", NULL };
const char *const ktls_names[] = { "off", "auto", "force", NULL };

static const char usage[] =
	"usage: handoff_server [--die-before-ack N] [--trace FILE] [--mermaid]\n"
	"       handoff_server --serve [--port N] [--workers N] [--model M] [options]\n"
	"Stage 06: a pre-forked HTTP server; the dispatcher hands each connection to a\n"
	"worker with SCM_RIGHTS, keeps its copy until the worker acknowledges it, and\n"
	"re-dispatches it if the worker dies first.\n"
	"  --workers N         worker processes (default: the number of cores)\n"
	"  --model M           handoff (default), fork-per-conn, reuseport or proxy\n"
	"  --die-before-ack N  break it: the worker given the N-th connection dies\n"
	"                      before acknowledging it (handoff model)\n"
	"  --header-timeout MS a client gets MS ms to send a request head (default 10000)\n"
	"  --inflight-max N    un-acknowledged descriptors per worker (default 1024)\n"
	"  --queue-max N       connections the dispatcher queues before it answers 503\n"
	"                      (default 4096)\n"
	"  --respawn-fails     break it: every replacement worker exits before it is\n"
	"                      ready; the dispatcher backs off instead of fork-looping\n"
	"  --tls               HTTPS (handoff model, with --serve): the dispatcher runs\n"
	"                      the TLS 1.3 handshake, then hands over the descriptor\n"
	"                      with the session state (stage 05's after-handshake mode)\n"
	"  --handshake-timeout MS  --tls: bound on one handshake (default 3000)\n"
	"  --handshakes-max N  --tls: handshakes in flight; past it the oldest is closed\n"
	"                      (default 1024)\n"
	"  --ktls MODE         --tls: off (default), auto or force: each worker installs\n"
	"                      the sessions it takes over in the kernel (kernel TLS)\n"
	"                      and serves them with plain read and write; off keeps\n"
	"                      them on stage 05's record layer, which also takes a\n"
	"                      client's KeyUpdate (a kernel before 6.14 cannot)\n"
	"  --read-ahead        break it (--tls): let OpenSSL read ahead, so a request that\n"
	"                      comes with the client's Finished strands raw bytes in it:\n"
	"                      the session cannot be exported, the dispatcher closes it\n"
	"SIGUSR1 prints one line: counters: accepted=.. handed_off=.. acked=..\n"
	"redispatched=.. respawned=.. refused=.. lost=.. tls_failed=.. tls_unexportable=..\n"
	"(also printed at exit)\n" COMMON_USAGE;

int main(int argc, char **argv)
{
	enum { OPT_WORKERS = OPT_STAGE, OPT_MODEL, OPT_DIE, OPT_HEADER, OPT_INFLIGHT, OPT_QUEUE,
	       OPT_RESPAWN_FAILS, OPT_TLS, OPT_HANDSHAKE, OPT_READAHEAD, OPT_HANDSHAKES, OPT_KTLS };
	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "workers", required_argument, NULL, OPT_WORKERS },
		{ "model", required_argument, NULL, OPT_MODEL },
		{ "die-before-ack", required_argument, NULL, OPT_DIE },
		{ "header-timeout", required_argument, NULL, OPT_HEADER },
		{ "inflight-max", required_argument, NULL, OPT_INFLIGHT },
		{ "queue-max", required_argument, NULL, OPT_QUEUE },
		{ "respawn-fails", no_argument, NULL, OPT_RESPAWN_FAILS },
		{ "tls", no_argument, NULL, OPT_TLS },
		{ "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE },
		{ "read-ahead", no_argument, NULL, OPT_READAHEAD },
		{ "handshakes-max", required_argument, NULL, OPT_HANDSHAKES },
		{ "ktls", required_argument, NULL, OPT_KTLS },
		{ 0 },
	};
	if (argc > 1 && strcmp(argv[1], "--worker-role") == 0)
		worker_exec_main(argc, argv); /* a worker the dispatcher started */
	struct common_opts o = { 0 };
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	struct config cfg = {
		.model = M_HANDOFF,
		.workers = cores < 1 ? 1 : cores > MAX_WORKERS ? MAX_WORKERS : (int)cores,
		.header_ms = 10000,
		.inflight_max = 1024,
		.queue_max = 4096,
		.handshake_ms = 3000,
		.handshakes_max = 1024,
	};
	int model_given = 0, ktls_given = 0, c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&o, c, optarg, usage))
			continue;
		switch (c) {
		case OPT_WORKERS: cfg.workers = (int)parse_long("--workers", optarg, 1, MAX_WORKERS); break;
		case OPT_MODEL: cfg.model = parse_choice("--model", optarg, model_names), model_given = 1; break;
		case OPT_DIE: cfg.die_at = (int)parse_long("--die-before-ack", optarg, 1, 1000000000); break;
		case OPT_HEADER: cfg.header_ms = (int)parse_long("--header-timeout", optarg, 10, 3600000); break;
		case OPT_INFLIGHT: cfg.inflight_max = (int)parse_long("--inflight-max", optarg, 1, 65536); break;
		case OPT_QUEUE: cfg.queue_max = (int)parse_long("--queue-max", optarg, 1, 1000000); break;
		case OPT_RESPAWN_FAILS: cfg.respawn_fails = 1; break;
		case OPT_TLS: cfg.tls = 1; break;
		case OPT_READAHEAD: cfg.read_ahead = 1; break;
		case OPT_KTLS: cfg.ktls = parse_choice("--ktls", optarg, ktls_names), ktls_given = 1; break;
		case OPT_HANDSHAKES: cfg.handshakes_max = (int)parse_long("--handshakes-max", optarg, 1, 1000000); break;
		case OPT_HANDSHAKE: cfg.handshake_ms = (int)parse_long("--handshake-timeout", optarg, 10, 600000); break;
		}
	}
	common_done(&o, argc, argv, usage);
	if (!o.serve && model_given && cfg.model != M_HANDOFF)
		usage_error("the demo shows the handoff model; --model goes with --serve");
	if (cfg.die_at && cfg.model != M_HANDOFF)
		usage_error("--die-before-ack goes with the handoff model");
	if (!o.serve && cfg.respawn_fails)
		usage_error("--respawn-fails goes with --serve");
	if (cfg.respawn_fails && cfg.model == M_FORK)
		usage_error("--respawn-fails needs workers: not with fork-per-conn");
	if (!o.serve && cfg.die_at > 2)
		usage_error("the demo makes two connections: --die-before-ack 1 or 2");
	if (cfg.tls && (!o.serve || cfg.model != M_HANDOFF))
		usage_error("--tls goes with --serve and the handoff model");
	if (cfg.read_ahead && !cfg.tls)
		usage_error("--read-ahead goes with --tls");
	if (ktls_given && !cfg.tls)
		usage_error("--ktls goes with --tls");
	if (cfg.ktls != KTLS_OFF) {
		/* Tried, not read: the probe sets TCP_ULP on a connection of its
		 * own, which also loads the tls module where it can be loaded. */
		int avail = ktls_available(cfg.ktls_why, sizeof cfg.ktls_why);
		if (avail < 0)
			snprintf(cfg.ktls_why, sizeof cfg.ktls_why, "the probe's loopback connection: %s (%s)",
				 strerrorname_np(errno), strerror(errno));
		if (cfg.ktls == KTLS_FORCE && avail != 1) {
			fprintf(stderr, "%s: --ktls force: no kernel TLS here (%s)\n",
				program_invocation_short_name, cfg.ktls_why);
			return EXIT_RUNTIME;
		}
		cfg.ktls_on = avail == 1;
	}
	signal(SIGPIPE, SIG_IGN); /* belt and braces: every send already says MSG_NOSIGNAL */

	/* A thousand connections need a thousand descriptors, in the dispatcher
	 * (queued, un-acknowledged) and in a worker: raise the soft limit. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	/* --tls: a P-256 key and a self-signed certificate made in memory, and
	 * stage 05's server context (TLS 1.3 only, read-ahead off, the keylog and
	 * message callbacks that capture what the handoff needs). */
	EVP_PKEY *pkey = NULL;
	X509 *cert = NULL;
	if (cfg.tls) {
		const struct tlsx_ctx_opts co = { .tickets = 2, .read_ahead = cfg.read_ahead };
		const char *failed = "tlsx_make_identity";
		if (tlsx_make_identity(&pkey, &cert) < 0 || !(cfg.ctx = tlsx_server_ctx(&co, pkey, cert, &failed)))
		{
			const char *why = ERR_reason_error_string(ERR_get_error());
			die("%s (OpenSSL: %s)", failed, why ? why : "no reason given");
		}
	}

	struct nar n;
	if (nar_open(&n, "dispatcher", o.trace, o.mermaid) < 0)
		die("open trace file");
	int rc = o.serve ? serve(&n, &cfg, o.port) : demo(&n, &cfg);
	if (o.mermaid)
		nar_mermaid(&n, stdout);
	nar_close(&n);
	SSL_CTX_free(cfg.ctx);
	X509_free(cert);
	EVP_PKEY_free(pkey);
	return rc;
}
