/*
 * serve.c - stage 03's --serve: a worker is forked before any client comes;
 * the parent accepts each connection on 127.0.0.1, passes it to the worker
 * over a SOCK_SEQPACKET channel with fdpass_send, and closes its copy. The
 * worker echoes every connection it holds, tagged "[worker PID] ".
 *
 * Run it:  ./scm_rights --serve [--port N]     then: nc 127.0.0.1 N
 * SIGTERM/SIGINT end it: the channel is closed, the worker sees EOF, closes
 * every connection and exits; the parent reaps it.
 * See also: poll(2), signalfd(2), accept4(2), unix(7).
 */
#define _GNU_SOURCE
#include "scm_rights.h"
#include "../common/cli.h"
#include "../common/util.h"
#include "fdpass.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- --serve: a pre-forked worker serves every connection --------------- */

/* The worker's loop: the channel brings connections, each is echoed. */
static void serve_worker(const struct nar *n, int ch)
{
	struct pollfd p[65] = { { .fd = ch, .events = POLLIN } };
	nfds_t np = 1;
	for (;;) {
		if (poll(p, np, -1) < 0) { /* the parent closing the channel always wakes us */
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[0].revents) {
			char c;
			int fd;
			struct fdpass_rx rx = { .buf = &c, .cap = 1, .fds = &fd, .max_fds = 1,
						.flags = FDPASS_NEED_FD };
			int st = fdpass_recv(ch, &rx);
			if (st == FDPASS_EOF || st == FDPASS_ESYS)
				break; /* the parent is shutting down */
			if (st == FDPASS_OK && np < 65) {
				p[np++] = (struct pollfd){ .fd = fd, .events = POLLIN };
				say(n, "received a connection as fd %d", fd);
			} else if (st == FDPASS_OK) {
				close(fd); /* full: refusing is better than growing without bound */
			}
		}
		for (nfds_t i = 1; i < np; i++) {
			if (!p[i].revents)
				continue;
			char buf[512], reply[600];
			ssize_t r = read(p[i].fd, buf, sizeof buf);
			size_t len = 0;
			if (r > 0) { /* the tag, then the bytes as they came */
				len = (size_t)snprintf(reply, sizeof reply, "[%s %d] ", n->role,
						       (int)getpid());
				memcpy(reply + len, buf, (size_t)r);
				len += (size_t)r;
			}
			if (r <= 0 || write_all(p[i].fd, reply, len) < 0) {
				close(p[i].fd);
				p[i--] = p[--np];
			}
		}
	}
	for (nfds_t i = 1; i < np; i++)
		close(p[i].fd);
}

int serve(struct nar *n, int port)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	int lfd = listen_loopback(port, &port);
	if (lfd < 0)
		die("socket/bind/listen on 127.0.0.1:%d", port);
	int sfd = signal_fd(0);
	if (sfd < 0)
		die("signalfd");
	pid_t wpid = fork();
	if (wpid < 0)
		die("fork");
	if (wpid == 0) {
		n->role = "worker";
		close(sv[0]);
		close(lfd);
		close(sfd);
		serve_worker(n, sv[1]);
		_exit(0);
	}
	close(sv[1]);
	int spare = spare_fd();
	announce_listening(port);
	for (;;) {
		struct pollfd p[2] = { { .fd = lfd, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0 && errno != EINTR) /* a signal always ends the wait */
			die("poll");
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		int conn = accept_shedding(lfd, &spare);
		if (conn < 0)
			continue;
		char err[ERRNO_TEXT_LEN];
		int st = fdpass_send(sv[0], "c", 1, &conn, 1, NULL);
		if (st != FDPASS_OK)
			say(n, "could not pass fd %d: %s (%s)", conn, fdpass_strerror(st),
			    errno_text(errno, err, sizeof err));
		else
			say(n, "accept() -> fd %d, passed to worker %d, and closed here", conn, (int)wpid);
		close(conn);
	}
	if (spare >= 0)
		close(spare);
	close(sv[0]); /* the worker sees EOF and finishes */
	if (reap_child(wpid, WAIT_MS, NULL) < 0)
		say(n, "worker %d did not finish in time: killed", (int)wpid);
	close(sfd);
	close(lfd);
	return EXIT_LESSON;
}

