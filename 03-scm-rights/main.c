/*
 * main.c - stage 03's command line: the demo and its switches, --serve,
 * the interop commands, and --list-fds (the program the worker execs).
 *
 * Run it:  ./scm_rights --help
 * See also: scm_rights.c (the lesson), getopt_long(3).
 */
#define _GNU_SOURCE
#include "scm_rights.h"
#include "../common/cli.h"
#include "fdpass.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
	"usage: scm_rights [--kind socket|file|pipe] [--channel stream|seqpacket]\n"
	"                  [--zero-byte | --small-control | --no-cloexec | --classic-receiver]\n"
	"                  [--trace FILE] [--mermaid]\n"
	"       scm_rights --serve [--port N]\n"
	"       scm_rights send --unix PATH FILE...\n"
	"       scm_rights recv --unix PATH [--count N] [--max-fds M] [--classic-receiver]\n"
	"Stage 03: pass a descriptor to a running worker with SCM_RIGHTS.\n"
	"  --kind K         what to pass: socket (a client connection, default), file, pipe\n"
	"  --channel T      the parent<->worker channel: stream (default) or seqpacket\n"
	"  --zero-byte      break it: send the descriptor with an empty payload\n"
	"  --small-control  break it: send 3 descriptors to a worker with room for 1\n"
	"  --no-cloexec     break it: receive without MSG_CMSG_CLOEXEC, then exec\n"
	"  --classic-receiver  break it: send 2 descriptors to a receiver built for 1\n"
	"                   (one break-it switch at a time, with --kind socket)\n" COMMON_USAGE
	"send: connect to the Unix socket PATH, open each FILE read-only, send them all in\n"
	"      one message with a one-byte payload.\n"
	"recv: listen on PATH; for every descriptor received print\n"
	"      'received fd=N kind=K dev=D ino=I' (and 'content: LINE' for a regular file),\n"
	"      then close it; at most M (default 16) per message; exit after N descriptors\n"
	"      or on SIGTERM/SIGINT. --classic-receiver: receive as the classic books do\n"
	"      (room for one int, a length check), leaking what that rejects.\n";

int main(int argc, char **argv)
{
	if (argc > 1 && (strcmp(argv[1], "send") == 0 || strcmp(argv[1], "recv") == 0))
		return interop(argc - 1, argv + 1, usage);
	/* the program the worker execs (demo_breakit.c): the descriptors it
	 * may write events to come in argv */
	if (argc == 4 && strcmp(argv[1], "--list-fds") == 0)
		return list_fds(atoi(argv[2]), atoi(argv[3]));

	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "kind", required_argument, NULL, OPT_STAGE },
		{ "channel", required_argument, NULL, OPT_STAGE + 1 },
		{ "zero-byte", no_argument, NULL, OPT_STAGE + 2 },
		{ "small-control", no_argument, NULL, OPT_STAGE + 3 },
		{ "no-cloexec", no_argument, NULL, OPT_STAGE + 4 },
		{ "classic-receiver", no_argument, NULL, OPT_STAGE + 5 },
		{ 0 },
	};
	struct common_opts co = { 0 };
	struct demo_opts o = { 0 };
	int c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&co, c, optarg, usage))
			continue;
		switch (c) {
		case OPT_STAGE: o.kind = (enum kind)parse_choice("--kind", optarg, kind_names); break;
		case OPT_STAGE + 1: o.channel = parse_choice("--channel", optarg, channel_names); break;
		case OPT_STAGE + 2: o.zero_byte = 1; break;
		case OPT_STAGE + 3: o.small_control = 1; break;
		case OPT_STAGE + 4: o.no_cloexec = 1; break;
		case OPT_STAGE + 5: o.classic = 1; break;
		}
	}
	common_done(&co, argc, argv, usage);
	int breakit = o.zero_byte + o.small_control + o.no_cloexec + o.classic;
	if (breakit > 1)
		usage_error("one break-it switch at a time");
	if (breakit && o.kind != KIND_SOCKET)
		usage_error("the break-it switches show what happens to a client connection: "
			    "use them with --kind socket");
	if (o.classic && o.channel)
		usage_error("--classic-receiver uses a stream channel");
	if (co.serve && (breakit || o.kind || o.channel))
		usage_error("--serve takes only --port");
	signal(SIGPIPE, SIG_IGN);

	struct nar n;
	if (nar_open(&n, "parent", co.trace, co.mermaid) < 0)
		die("open trace file");
	int rc = co.serve ? serve(&n, co.port) : demo(&n, &o);
	if (co.mermaid)
		nar_mermaid(&n, stdout);
	nar_close(&n);
	return rc;
}
