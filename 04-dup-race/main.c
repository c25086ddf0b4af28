/*
 * main.c - stage 04's command line: the demo (three modes and a table, or
 * one mode), --serve for outside clients, and the result line.
 *
 * Part of stage 04 (./dup_race --help); the lesson is in dup_race.c.
 * Article: Q2, steps 2 and 3 (see dup_race.c).
 * See also: getrlimit(2) (--stress raises RLIMIT_NOFILE), signalfd(2) (--serve).
 */
#define _GNU_SOURCE
#include "dup_race.h"
#include "../01-basic-fork/checkpoint.h"
#include "../common/cli.h"
#include "../common/util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

static const char usage[] =
	"usage: dup_race [--mode naive|article|fixed] [--poller select|poll|epoll] [--child-dup]\n"
	"                [--connections N | --stress N] [--no-fd-clr] [--trace FILE] [--mermaid]\n"
	"       dup_race --serve [--port N] [--mode M] [--poller P] [--child-dup] [--no-fd-clr]\n"
	"Stage 04: the parent's event loop steals the bytes of a connection whose descriptor\n"
	"is in flight to a worker - unless it stops watching it first.\n"
	"  --mode M         naive: send client_fd, keep watching it\n"
	"                   article: dup, send the duplicate, close the original (step 2)\n"
	"                   fixed: stop watching, send, close\n"
	"                   (no --mode: run all three and print a table)\n"
	"  --poller P       the parent's (and the worker's) event loop; default select\n"
	"  --child-dup      the worker dups what it received and closes the original (step 3)\n"
	"  --connections N  forced rounds per mode, 1..64 (default 2)\n"
	"  --stress N       N connections with natural timing, nobody held (1..5000)\n"
	"  --no-fd-clr      break it (select/poll): closing a number does not drop it from\n"
	"                   the set: EBADF from select, POLLNVAL from poll\n" COMMON_USAGE
	CHECKPOINT_USAGE;

/* --serve: the same dispatcher for external clients, one forced round per
 * connection: accept, wait for the client's bytes, hand off, look, release. */
static int serve(struct nar *n, const struct cfg *c, int port, struct stats *out)
{
	struct parent *p = calloc(1, sizeof *p);
	if (!p)
		die("calloc");
	struct kids k;
	n->quiet = 1; /* the first line must be "listening on" */
	setup(p, n, c, port, 0, &k, &port);
	/* After the fork: the worker has no business with the server's signals
	 * (it ends when the channel closes), so it must not inherit this. */
	int sfd = signal_fd(0);
	if (sfd < 0)
		die("signalfd");
	sfd = high(sfd);
	p->sfd = sfd;
	if (watch_add(&p->w, sfd, TAG_SIG) < 0)
		die("watch");
	int before = count_fds();
	announce_listening(port);
	n->quiet = 0;
	say(n, "mode %s, poller %s, child-dup %s; pre-forked worker %d", mode_names[c->mode],
	    poller_names[c->poller], c->child_dup ? "on" : "off", (int)k.worker);
	while (!p->stop) {
		loop_once(p, -1, 1); /* a server waits for clients as long as it runs */
		if (!p->handed)
			continue;
		look(p);
		release_worker(p, p->next_id);
		wait_report(p);
	}
	say(n, "shutting down");
	if (write(p->bell_w, "!", 1) == 1)
		loop_once(p, 0, 0);
	p->st.growth = count_fds() - before;
	/* What the clients sent, as far as the server can know: every byte
	 * anyone on this side read from the connections. */
	p->st.sent = p->st.delivered + p->st.stolen;
	int ok = teardown(p, &k);
	close(sfd);
	*out = p->st;
	free(p);
	return ok;
}

static void result_line(const char *mode, const struct cfg *c, const struct stats *s)
{
	out_line("result: mode=%s poller=%s child_dup=%d connections=%ld sent=%ld delivered=%ld "
		 "stolen=%ld stale_events=%ld misdirected=%ld parent_fd_growth=%ld",
		 mode, poller_names[c->poller], c->child_dup, s->connections, s->sent, s->delivered,
		 s->stolen, s->stale, s->misdirected, s->growth);
}

/* Did this mode teach what it should? (forced rounds; --stress only checks fixed) */
static int lesson_ok(const struct cfg *c, const struct stats *s)
{
	int clean = s->stolen == 0 && s->stale == 0 && s->misdirected == 0 && s->growth == 0 &&
		    s->delivered == s->sent;
	if (c->mode == FIXED)
		return clean;
	if (c->stress)
		return 1;
	if (c->mode == NAIVE)
		return s->stolen > 0;
	if (c->no_fd_clr)
		return s->stale > 0 && s->stolen == 0;
	if (c->poller == P_EPOLL)
		return s->stale > 0;
	return s->stolen == 0 && s->growth == s->connections;
}

int main(int argc, char **argv)
{
	enum { OPT_MODE = OPT_STAGE, OPT_POLLER, OPT_CHILD_DUP, OPT_CONNS, OPT_STRESS, OPT_NO_FD_CLR,
	       OPT_CHECKPOINT };
	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "mode", required_argument, NULL, OPT_MODE },
		{ "poller", required_argument, NULL, OPT_POLLER },
		{ "child-dup", no_argument, NULL, OPT_CHILD_DUP },
		{ "connections", required_argument, NULL, OPT_CONNS },
		{ "stress", required_argument, NULL, OPT_STRESS },
		{ "no-fd-clr", no_argument, NULL, OPT_NO_FD_CLR },
		{ "checkpoint", required_argument, NULL, OPT_CHECKPOINT },
		{ 0 },
	};
	struct common_opts o = { 0 };
	struct cfg c = { .mode = ALL_MODES, .poller = P_SELECT, .connections = 2 };
	int conns_given = 0, ch;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&o, ch, optarg, usage))
			continue;
		switch (ch) {
		case OPT_MODE: c.mode = parse_choice("--mode", optarg, mode_names); break;
		case OPT_POLLER: c.poller = parse_choice("--poller", optarg, poller_names); break;
		case OPT_CHILD_DUP: c.child_dup = 1; break;
		case OPT_CONNS:
			c.connections = (int)parse_long("--connections", optarg, 1, 64);
			conns_given = 1;
			break;
		case OPT_STRESS: c.stress = parse_long("--stress", optarg, 1, 5000); break;
		case OPT_NO_FD_CLR: c.no_fd_clr = 1; break;
		case OPT_CHECKPOINT: c.checkpoint = optarg; break;
		}
	}
	common_done(&o, argc, argv, usage);
	if (c.stress && (o.serve || conns_given))
		usage_error("--stress runs its own clients; it goes with neither --serve nor --connections");
	if (c.stress && o.mermaid)
		usage_error("--mermaid draws forced rounds; it does not go with --stress");
	if (c.no_fd_clr && c.poller == P_EPOLL)
		usage_error("--no-fd-clr is for select and poll; under epoll, --mode article already "
			    "closes without EPOLL_CTL_DEL");
	signal(SIGPIPE, SIG_IGN); /* a client that left is an EPIPE, handled where it happens */
	if (c.stress) {
		/* --mode article keeps a duplicate per connection: let it grow
		 * past the default soft limit rather than fail on EMFILE. */
		struct rlimit rl;
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max &&
		    rl.rlim_cur < (rlim_t)c.stress + 64) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}

	struct nar n;
	if (nar_open(&n, "parent", o.trace, o.mermaid) < 0)
		die("open trace file");
	int ok = 1;
	struct stats s = { 0 };
	if (o.serve) {
		if (c.mode == ALL_MODES)
			c.mode = NAIVE;
		ok = serve(&n, &c, o.port, &s);
		nar_close(&n);
		result_line(mode_names[c.mode], &c, &s);
		return ok ? EXIT_LESSON : EXIT_RUNTIME;
	}
	if (c.mode != ALL_MODES) {
		ok = scenario(&n, &c, &s) && lesson_ok(&c, &s);
		if (o.mermaid)
			nar_mermaid(&n, stdout);
		fflush(stdout); /* stdio buffer: out before the result line (write(2)) */
		nar_close(&n);
		result_line(mode_names[c.mode], &c, &s);
		return ok ? EXIT_LESSON : EXIT_RUNTIME;
	}
	/* No --mode: the three of them, one after the other, and a table. */
	struct stats each[3];
	for (int m = NAIVE; m <= FIXED; m++) {
		struct cfg one = c;
		one.mode = (enum mode)m;
		if (!scenario(&n, &one, &each[m]) || !lesson_ok(&one, &each[m]))
			ok = 0;
		s.connections += each[m].connections;
		s.sent += each[m].sent;
		s.delivered += each[m].delivered;
		s.stolen += each[m].stolen;
		s.stale += each[m].stale;
		s.misdirected += each[m].misdirected;
		s.growth += each[m].growth;
	}
	out_line("%-8s %-7s %5s %9s %6s %12s %11s %16s", "mode", "poller", "sent", "delivered",
		 "stolen", "stale_events", "misdirected", "parent_fd_growth");
	for (int m = NAIVE; m <= FIXED; m++)
		out_line("%-8s %-7s %5ld %9ld %6ld %12ld %11ld %16ld", mode_names[m],
			 poller_names[c.poller], each[m].sent, each[m].delivered, each[m].stolen,
			 each[m].stale, each[m].misdirected, each[m].growth);
	if (o.mermaid)
		nar_mermaid(&n, stdout);
	fflush(stdout); /* stdio buffer: out before the result line (write(2)) */
	nar_close(&n);
	result_line("all", &c, &s);
	return ok ? EXIT_LESSON : EXIT_RUNTIME;
}
