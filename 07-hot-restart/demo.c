/*
 * demo.c - stage 07's narrated demo: a client that keeps asking while the
 * server upgrades itself twice.
 *
 * The client holds one keep-alive connection (K) for the whole run, opens a
 * new connection for a request before each upgrade (N) and during it (M),
 * and leaves one request half-sent across each upgrade (H), so the old
 * generation has to finish it before it may hand H over. The server's
 * generations tell the client where they are through a pipe (ready,
 * partial, draining, exit), so every step happens in the same order every
 * run, with no sleep: the --mermaid diagram is the same each time.
 *
 * Run it:    ./hot_restart [--mermaid] [--fail-upgrade exec|crash]
 * See also:  prctl(2) (PR_SET_CHILD_SUBREAPER: the orphaned generations are
 *            reparented to us, and we reap them), hot_restart.c.
 */
#define _GNU_SOURCE
#include "demo.h"
#include "../common/cli.h"
#include "../common/narrate.h"
#include "../common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

struct demo {
	struct nar n;
	int notify;       /* read end of the generations' status pipe */
	int port;
	pid_t master;     /* the current generation */
	int generation;
	int requests, answered;
};

/* Waits (bounded) for the status line that starts with `word`; earlier lines
 * are skipped. Returns its length, or -1. */
static int await(struct demo *d, const char *word, char *line, size_t cap)
{
	for (;;) {
		if (read_line(d->notify, line, cap, WAIT_MS) <= 0)
			return -1;
		if (strncmp(line, word, strlen(word)) == 0)
			return 0;
	}
}

/* Sends the rest of a request on fd and reads the answer: the generation
 * that served it, or -1. */
static int finish_get(struct demo *d, int fd, const char *rest, const char *conn)
{
	d->requests++;
	if (write_all(fd, rest, strlen(rest)) < 0)
		return -1;
	char buf[512];
	size_t len = 0;
	for (;;) {
		ssize_t r = read_within(fd, buf + len, sizeof buf - 1 - len, WAIT_MS);
		if (r <= 0)
			return -1;
		len += (size_t)r;
		buf[len] = '\0';
		char *body = strstr(buf, "\r\n\r\n");
		int g, pid;
		if (body && sscanf(body + 4, "served by generation %d pid %d", &g, &pid) == 2 &&
		    strstr(body + 4, "pid ") && buf[len - 1] != ' ') {
			d->answered++;
			say(&d->n, "conn %s: \"%s\"", conn, body + 4);
			return g;
		}
	}
}

static int get(struct demo *d, int fd, const char *conn, int close_it)
{
	char req[128];
	snprintf(req, sizeof req, "GET /%s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n", conn,
		 close_it ? "Connection: close\r\n" : "");
	return finish_get(d, fd, req, conn);
}

static int connect_or_die(struct demo *d, const char *conn)
{
	int fd = connect_loopback(d->port);
	if (fd < 0)
		die("connect 127.0.0.1:%d", d->port);
	ev(&d->n, "connect", NULL, "conn=%s", conn);
	return fd;
}

/* Starts generation 1: /proc/self/exe --serve, as an operator would. */
static pid_t start_server(struct demo *d, int wfd, int fail)
{
	char nar[32], notify[16];
	snprintf(nar, sizeof nar, "%d,%d", d->n.trace_fd, d->n.seq_fd);
	snprintf(notify, sizeof notify, "%d", wfd);
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	int keep[] = { d->n.trace_fd, d->n.seq_fd, wfd };
	for (int i = 0; i < 3; i++)
		if (keep[i] >= 0)
			fcntl(keep[i], F_SETFD, 0);
	const char *argv[] = { "hot_restart", "--serve", "--strategy", "handoff", "--nar-fds", nar,
			       "--notify-fd", notify, "--verbose", "--fail-upgrade",
			       fail == 1 ? "exec" : fail == 2 ? "crash" : "none", NULL };
	execv("/proc/self/exe", (char *const *)argv);
	_exit(127);
}

/* One upgrade, driven by the client: returns 1 if it happened, 0 if the
 * new generation failed and the old one kept serving, -1 on error. */
static int upgrade(struct demo *d, int k)
{
	char line[128];
	int g = d->generation;
	int n = connect_or_die(d, "N");
	if (get(d, n, "N", 1) != g)
		return -1;
	close(n);
	/* H: half a request, so the old generation is busy with it. */
	int h = connect_or_die(d, "H");
	const char *half = "GET /H HTTP/1.1\r\n";
	if (write_all(h, half, strlen(half)) < 0 || await(d, "partial", line, sizeof line) < 0)
		return -1;
	say(&d->n, "conn H: sent half a request; now SIGHUP to generation %d", g);
	ev(&d->n, "SIGHUP", d->generation == 1 ? "gen1" : d->generation == 2 ? "gen2" : "gen3",
	   NULL);
	kill(d->master, SIGHUP);
	int ng, npid, port;
	if (read_line(d->notify, line, sizeof line, WAIT_MS) <= 0)
		return -1;
	if (strncmp(line, "failed", 6) == 0) {
		say(&d->n, "generation %d never became ready; generation %d still serves", g + 1,
		    g);
		int r1 = finish_get(d, h, "Host: 127.0.0.1\r\n\r\n", "H");
		close(h);
		return r1 == g && get(d, k, "K", 0) == g ? 0 : -1;
	}
	if (sscanf(line, "ready %d %d %d", &ng, &npid, &port) != 3 ||
	    await(d, "handing", line, sizeof line) < 0 ||
	    await(d, "draining", line, sizeof line) < 0)
		return -1;
	/* M: a new connection while the old one is still draining. */
	int m = connect_or_die(d, "M");
	int gm = get(d, m, "M", 1);
	close(m);
	/* The rest of H: the old generation answers, then hands H over. */
	int gh = finish_get(d, h, "Host: 127.0.0.1\r\n\r\n", "H");
	int st;
	if (gm != ng || gh != g || await(d, "exit", line, sizeof line) < 0 ||
	    wait_child(d->master, WAIT_MS, &st) < 0)
		return -1;
	say(&d->n, "generation %d exited (status %d); pid %d is generation %d", g, WEXITSTATUS(st),
	    npid, ng);
	d->master = npid;
	d->generation = ng;
	/* H stays open: it now belongs to the new generation. */
	int gh2 = get(d, h, "H", 1);
	close(h);
	return gh2 == ng && get(d, k, "K", 0) == ng ? 1 : -1;
}

int run_demo(const char *trace, int mermaid, int fail)
{
	struct demo d = { .generation = 1 };
	if (nar_open(&d.n, "client", trace, mermaid) < 0)
		die("open %s", trace ? trace : "/tmp");
	/* Each old generation exits before its successor: the successor is
	 * reparented to us, and we can reap it when its turn comes. */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		die("prctl PR_SET_CHILD_SUBREAPER");
	signal(SIGPIPE, SIG_IGN);
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		die("pipe2");
	d.notify = p[0];
	pid_t pid = start_server(&d, p[1], fail);
	if (pid < 0)
		die("fork");
	close(p[1]);
	char line[128];
	int g1;
	if (await(&d, "ready", line, sizeof line) < 0 ||
	    sscanf(line, "ready %d %d %d", &g1, &d.master, &d.port) != 3)
		die("generation 1 did not start");
	say(&d.n, "generation 1 is pid %d on port %d; conn K stays open all along", d.master,
	    d.port);
	int k = connect_or_die(&d, "K");
	int ok = get(&d, k, "K", 0) == 1;
	int upgrades = 0, failed = 0;
	while (ok && upgrades < 2) {
		int r = upgrade(&d, k);
		ok = r >= 0;
		upgrades += r == 1;
		failed += r == 0;
		if (failed > 1)
			ok = 0;
	}
	int last = ok ? get(&d, k, "K", 1) : -1;
	close(k);
	kill(d.master, SIGTERM);
	int st = 0;
	if (reap_child(d.master, WAIT_MS, &st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		ok = 0;
	/* Whatever else was ours (a failed generation) is reaped too. */
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	close(d.notify);
	ok = ok && last == 3 && d.answered == d.requests;
	say(&d.n, "%d requests, %d answered; conn K was served last by generation %d without "
		  "reconnecting", d.requests, d.answered, last);
	out_line("result: requests=%d answered=%d upgrades=%d failed_upgrades=%d "
		 "keepalive_generation=%d", d.requests, d.answered, upgrades, failed, last);
	if (mermaid)
		nar_mermaid(&d.n, stdout);
	nar_close(&d.n);
	return ok ? EXIT_LESSON : EXIT_RUNTIME;
}
