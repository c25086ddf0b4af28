/*
 * main.c - stage 07's command line: the demo, --serve, and the options a
 * generation passes to the next one when it exec()s it.
 *
 * Run it:    ./hot_restart --help
 * See also:  hot_restart.c (the lesson), server.c, strategies.c, demo.c.
 */
#define _GNU_SOURCE
#include "hot_restart.h"
#include "demo.h"
#include "../common/cli.h"
#include "../common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

static const char usage[] =
	"usage: hot_restart [options]\n"
	"  (no options)    narrated demo: a client keeps asking while the server\n"
	"                  upgrades itself twice, handing over its sockets\n"
	"  --strategy S    with --serve: handoff (default), stop-start, reuseport,\n"
	"                  reuseport-migrate (needs net.ipv4.tcp_migrate_req=1)\n"
	"  --pid-file PATH with --serve: the current generation's pid, replaced\n"
	"                  atomically by each new generation once it is ready\n"
	"  --fail-upgrade exec|crash  break it: the next generation fails to exec, or\n"
	"                  crashes before READY; the old one keeps serving\n"
	"  --hold POINT    test hook: the generation that reaches POINT waits there\n"
	"                  for a line on stdin: before-connect, before-ready (new,\n"
	"                  handoff), before-bind (new, naive), before-close (old,\n"
	"                  reuseport*)\n" COMMON_USAGE
	"SIGHUP to the current generation upgrades it; SIGTERM ends it.\n";

enum { OPT_STRATEGY = OPT_STAGE, OPT_PIDFILE, OPT_FAIL, OPT_HOLD, OPT_GEN, OPT_FROM,
       OPT_NARFDS, OPT_NOTIFY, OPT_VERBOSE };

/* SIGHUP, SIGTERM, SIGINT and SIGCHLD become readable events on one fd. */
static int gen_signal_fd(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

/* tcp_migrate_req is per network namespace: read the one we run in. */
static int migrate_req_enabled(void)
{
	char c = '0';
	int fd = open("/proc/sys/net/ipv4/tcp_migrate_req", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (read(fd, &c, 1) != 1)
			c = '0';
		close(fd);
	}
	return c == '1';
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "strategy", required_argument, NULL, OPT_STRATEGY },
		{ "pid-file", required_argument, NULL, OPT_PIDFILE },
		{ "fail-upgrade", required_argument, NULL, OPT_FAIL },
		{ "hold", required_argument, NULL, OPT_HOLD },
		/* What one generation tells the next (not for people). */
		{ "generation", required_argument, NULL, OPT_GEN },
		{ "upgrade-from", required_argument, NULL, OPT_FROM },
		{ "nar-fds", required_argument, NULL, OPT_NARFDS },
		{ "notify-fd", required_argument, NULL, OPT_NOTIFY },
		{ "verbose", no_argument, NULL, OPT_VERBOSE },
		{ 0 },
	};
	static const char *const fails[] = { "none", "exec", "crash", NULL };
	struct common_opts o = { 0 };
	struct gen g = { .generation = 1, .lfd = -1, .sigfd = -1, .spare = -1, .up_listen = -1,
			 .chan = -1, .notify_fd = -1, .self = argv[0] };
	int nar_fds[2] = { -1, -1 }, strategy_given = 0;
	int c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&o, c, optarg, usage))
			continue;
		switch (c) {
		case OPT_STRATEGY:
			g.strategy =
				(enum strategy)parse_choice("--strategy", optarg, strategy_names);
			strategy_given = 1;
			break;
		case OPT_PIDFILE:
			g.pid_file = optarg;
			break;
		case OPT_FAIL:
			g.fail = (enum fail_upgrade)parse_choice("--fail-upgrade", optarg, fails);
			break;
		case OPT_HOLD:
			g.hold = (enum hold_point)parse_choice("--hold", optarg, hold_names);
			break;
		case OPT_GEN:
			g.generation = (int)parse_long("--generation", optarg, 2, 1000000);
			break;
		case OPT_FROM:
			g.old_pid = (pid_t)parse_long("--upgrade-from", optarg, 1, 1 << 22);
			break;
		case OPT_NARFDS:
			if (sscanf(optarg, "%d,%d", &nar_fds[0], &nar_fds[1]) != 2)
				usage_error("--nar-fds takes TRACE,SEQ");
			break;
		case OPT_NOTIFY:
			g.notify_fd = (int)parse_long("--notify-fd", optarg, -1, 1 << 20);
			break;
		case OPT_VERBOSE:
			g.verbose = 1;
			break;
		default:
			usage_error("unknown option");
		}
	}
	common_done(&o, argc, argv, usage);
	if (!o.serve) {
		if (strategy_given || g.pid_file || g.hold || g.old_pid)
			usage_error("--strategy, --pid-file and --hold go with --serve");
		return run_demo(o.trace, o.mermaid, g.fail);
	}
	if ((g.generation > 1) != (g.old_pid > 0))
		usage_error("--generation and --upgrade-from go together");

	signal(SIGPIPE, SIG_IGN);
	snprintf(g.role, sizeof g.role, "gen%d", g.generation);
	if (nar_fds[0] >= 0 || nar_fds[1] >= 0) {
		/* Inherited from the generation before us (or the demo): take
		 * them back out of the next exec's way. */
		g.n = (struct nar){ .role = g.role, .trace_fd = nar_fds[0], .seq_fd = nar_fds[1] };
		for (int i = 0; i < 2; i++)
			if (nar_fds[i] >= 0)
				fcntl(nar_fds[i], F_SETFD, FD_CLOEXEC);
	} else if (nar_open(&g.n, g.role, o.trace, 0) < 0) {
		die("open %s", o.trace);
	}
	if (g.notify_fd >= 0)
		fcntl(g.notify_fd, F_SETFD, FD_CLOEXEC);
	g.conns = calloc(MAX_CONNS, sizeof *g.conns);
	if (!g.conns)
		die("calloc");
	for (size_t i = 0; i < MAX_CONNS; i++)
		g.conns[i].fd = -1;
	if ((g.sigfd = gen_signal_fd()) < 0)
		die("signalfd");
	if ((g.spare = spare_fd()) < 0)
		die("open /dev/null");

	if (g.generation == 1) {
		if (g.strategy == ST_REUSEPORT_MIGRATE && !migrate_req_enabled())
			die("reuseport-migrate needs net.ipv4.tcp_migrate_req=1 in this network "
			    "namespace (see README.md); /proc/sys/net/ipv4/tcp_migrate_req");
		if ((g.lfd = bind_listener(g.strategy, o.port, &g.port)) < 0)
			die("listen on 127.0.0.1:%d", o.port);
		if (write_pid_file(&g) < 0)
			die("write %s", g.pid_file);
		if (g.notify_fd < 0)
			announce_listening(g.port);
		say(&g.n, "generation 1: listening on 127.0.0.1:%d (%s)", g.port,
		    strategy_names[g.strategy]);
	} else {
		g.port = o.port;
		errno = 0;
		if (take_over(&g) < 0) {
			/* A failed call leaves its errno; an old generation that closed
			 * the channel without a word (it refused us) leaves none. */
			if (errno == 0) {
				fprintf(stderr, "%s: generation %d: pid %d closed the upgrade channel "
						"without handing anything over\n",
					program_invocation_short_name, g.generation, (int)g.old_pid);
				exit(EXIT_RUNTIME);
			}
			die("generation %d: taking over from pid %d", g.generation, (int)g.old_pid);
		}
		say(&g.n, "generation %d: ready, serving on 127.0.0.1:%d", g.generation, g.port);
	}
	g.accepting = 1;
	if (g.generation == 1)
		notify(&g, "ready %d %d %d", g.generation, (int)getpid(), g.port);
	int rc = gen_serve(&g);
	int saved = errno;
	close(g.sigfd);
	close(g.spare);
	if (g.notify_fd >= 0)
		close(g.notify_fd);
	free(g.conns);
	nar_close(&g.n);
	errno = saved;
	if (rc < 0)
		die("generation %d", g.generation);
	return 0;
}
