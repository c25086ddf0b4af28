/*
 * demo.c - stage 06: the narrated demo (./handoff_server with no
 * arguments): two workers, a built-in client making two connections, and
 * one worker that dies before it acknowledges its connection
 * (--die-before-ack, 2 by default), so the re-dispatch happens on screen.
 *
 * Run it:  ./handoff_server [--die-before-ack 1|2] [--trace FILE] [--mermaid]
 * See also: handoff_server.c (the lesson the demo narrates), pipe(2).
 */
#define _GNU_SOURCE
#include "../common/util.h"
#include "server.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Reads one response: its status and body. -1 on a timeout or bad bytes. */
static int read_response(int fd, char *body, size_t cap, int *closes)
{
	char buf[4096];
	size_t len = 0;
	char *end;
	while (!(end = memmem(buf, len, "\r\n\r\n", 4))) {
		ssize_t r = read_within(fd, buf + len, sizeof buf - 1 - len, WAIT_MS);
		if (r <= 0 || len + (size_t)r >= sizeof buf - 1)
			return -1;
		len += (size_t)r;
	}
	buf[len] = '\0';
	int status = 0;
	const char *cl = strcasestr(buf, "\r\nContent-Length:");
	if (sscanf(buf, "HTTP/1.1 %d", &status) != 1 || !cl)
		return -1;
	size_t want = strtoul(cl + 17, NULL, 10), have = len - (size_t)(end + 4 - buf);
	*closes = strcasestr(buf, "\r\nConnection: close") != NULL;
	if (want >= cap || have > want)
		return -1;
	memcpy(body, end + 4, have);
	while (have < want) {
		ssize_t r = read_within(fd, body + have, want - have, WAIT_MS);
		if (r <= 0)
			return -1;
		have += (size_t)r;
	}
	body[have] = '\0';
	return status;
}

/* One request on an open connection; 1 if it got a 200. */
static int client_get(struct nar *n, int fd, const char *path, int close_it, char *who)
{
	char req[256];
	int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: demo\r\n%s\r\n", path,
			   close_it ? "Connection: close\r\n" : "");
	ev(n, "request", who, "path=%s", path);
	if (write_all(fd, req, (size_t)len) < 0)
		return 0;
	char body[128];
	int closes = 0, status = read_response(fd, body, sizeof body, &closes);
	say(n, "GET %s -> %d \"%s\"%s", path, status, status > 0 ? body : "",
	    closes ? ", then close" : "");
	ev(n, "response", NULL, "status=%d", status);
	return status == 200;
}

static int demo_client(struct nar *n, int port, int go_fd)
{
	int ok = 0;
	char go, who[16];
	/* Connection A: two requests on one connection, the second closes it. */
	ev(n, "connect", "dispatcher", "conn=A");
	int a = connect_loopback(port);
	if (a < 0 || read_within(go_fd, &go, 1, WAIT_MS) != 1)
		return 1;
	snprintf(who, sizeof who, "worker-%c", go);
	say(n, "connected (connection A); the dispatcher says %s has it now", who);
	ok += client_get(n, a, "/first", 0, who);
	ok += client_get(n, a, "/second", 1, who);
	char x;
	int eof = read_within(a, &x, 1, WAIT_MS) == 0;
	close(a);
	/* Connection B: its first worker dies before acknowledging it. */
	ev(n, "connect", "dispatcher", "conn=B");
	int b = connect_loopback(port);
	if (b < 0 || read_within(go_fd, &go, 1, WAIT_MS) != 1)
		return 1;
	snprintf(who, sizeof who, "worker-%c", go);
	say(n, "connected (connection B); the dispatcher says %s has it now", who);
	ok += client_get(n, b, "/again", 1, who);
	close(b);
	return ok == 3 && eof ? 0 : 1;
}

int demo(struct nar *n, struct config *cfg)
{
	cfg->workers = 2;
	cfg->verbose = 1;
	if (!cfg->die_at)
		cfg->die_at = 2;
	struct disp d;
	disp_init(&d, n, cfg, 0);
	say(n, "listening on 127.0.0.1:%d; %d pre-forked workers, connected by SOCK_SEQPACKET "
	       "socketpairs",
	    d.port, cfg->workers);
	int go[2], done[2];
	if (pipe2(go, O_CLOEXEC) < 0 || pipe2(done, O_CLOEXEC) < 0)
		die("pipe2");
	pid_t cli = fork();
	if (cli < 0)
		die("fork");
	if (cli == 0) {
		n->role = "client";
		close(go[1]);
		close(done[0]);
		close(d.lfd);
		unblock_signals();
		int rc = demo_client(n, d.port, go[0]);
		close(go[0]);
		close(done[1]);
		disp_free(&d);
		nar_close(n);
		exit(rc);
	}
	close(go[0]);
	close(done[1]);
	d.client_pid = cli;
	d.go_fd = go[1];
	d.done_fd = done[0];
	start_workers(&d);
	say(n, "connection #%d will be given to a worker that dies before acknowledging it "
	       "(--die-before-ack %d)",
	    cfg->die_at, cfg->die_at);
	ep_add(d.ep, d.lfd, EPOLLIN, tag(T_LISTEN, 0));
	ep_add(d.ep, d.done_fd, EPOLLIN, tag(T_DONE, 0));
	dispatcher_loop(&d);
	if (d.client_pid) { /* not yet reaped by the SIGCHLD path */
		reap_child(d.client_pid, WAIT_MS, &d.client_status);
		d.client_pid = 0;
	}
	int client_ok = WIFEXITED(d.client_status) && WEXITSTATUS(d.client_status) == 0;
	say(n, "the client got every answer%s; the crashed worker's connection was re-dispatched "
	       "from my copy",
	    client_ok ? "" : " - NOT");
	print_counters(&d);
	out_line("result: client_ok=%d accepted=%llu acked=%llu redispatched=%llu respawned=%llu",
		 client_ok, d.c.accepted, d.c.acked, d.c.redispatched, d.c.respawned);
	int ok = client_ok && d.c.redispatched == 1 && d.c.respawned == 1;
	close(d.go_fd);
	close(d.done_fd);
	disp_free(&d);
	return ok ? EXIT_LESSON : EXIT_RUNTIME;
}
