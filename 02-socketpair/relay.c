/*
 * relay.c - stage 02's --serve (see relay.h): the channel of the lesson,
 * carrying a TCP client's lines to a worker and its answers back.
 *
 * Part of ./socketpair (./socketpair --serve --port 7002, then nc); the
 * lesson is in socketpair.c.
 * See also: socketpair(2), unix(7), poll(2), signalfd(2).
 */
#define _GNU_SOURCE
#include "relay.h"
#include "../01-basic-fork/checkpoint.h"
#include "../common/cli.h"
#include "../common/util.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* The --serve worker: answers every message on ch, tagged, until the
 * parent's end-of-file. ch stays open (the process exits). */
static void relay_worker(const struct nar *n, int ch, int type)
{
	char line[512], reply[600];
	for (;;) {
		ssize_t r = type == 0 ? read_line(ch, line, sizeof line, -1)
				      : read_within(ch, line, sizeof line - 1, -1);
		if (r <= 0)
			return; /* EOF: the parent closed the channel - time to go */
		/* the tag, then the bytes as they came (a NUL among them included) */
		int len = snprintf(reply, sizeof reply, "[%s %d] ", n->role, (int)getpid());
		memcpy(reply + len, line, (size_t)r);
		if (write_all(ch, reply, (size_t)len + (size_t)r) < 0)
			return;
	}
}

/*
 * --serve: every line a TCP client sends goes to the worker over the
 * channel and the worker's answer comes back. One client at a time. The
 * worker holds only its end; shutdown closes the parent's end, and the
 * worker must exit on that end-of-file: a worker that had to be killed
 * makes the run fail (exit 1).
 */
int serve(struct nar *n, int port, int type, const char *cp)
{
	int sv[2];
	if (socketpair(AF_UNIX, type_values[type] | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	int lfd = listen_loopback(port, &port);
	if (lfd < 0)
		die("socket/bind/listen on 127.0.0.1:%d", port);
	int sfd = signal_fd(0);
	if (sfd < 0)
		die("signalfd");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		n->role = "worker";
		close(sv[0]); /* or the parent's close() at shutdown would not end the channel */
		close(lfd);
		close(sfd);
		if (checkpoint(cp, "worker") < 0) /* the tests: sv[1], nothing else */
			_exit(1);
		relay_worker(n, sv[1], type);
		_exit(0);
	}
	close(sv[1]);
	int ch = sv[0], running = 1, spare = spare_fd();
	announce_listening(port);
	say(n, "worker %d is at the other end of the channel (fd %d)", (int)pid, ch);
	while (running) {
		struct pollfd p[2] = { { .fd = lfd, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			die("poll");
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		int c = accept_shedding(lfd, &spare);
		if (c < 0)
			continue;
		char line[512], reply[600];
		for (;;) {
			struct pollfd q[2] = { { .fd = c, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
			if (poll(q, 2, WAIT_MS * 3) <= 0 || q[1].revents) {
				running = !q[1].revents;
				break;
			}
			ssize_t r = read_line(c, line, sizeof line - 1, WAIT_MS); /* room for a '\n' */
			if (r <= 0)
				break;
			/* On a stream channel the '\n' is the only message boundary:
			 * a line cut short (too long, or the client's last bytes)
			 * gets one, or the worker would wait for it forever. */
			if (type == 0 && line[r - 1] != '\n')
				line[r++] = '\n';
			if (write_all(ch, line, (size_t)r) < 0)
				die("write to the worker");
			ssize_t w = type == 0 ? read_line(ch, reply, sizeof reply, WAIT_MS)
					      : read_within(ch, reply, sizeof reply, WAIT_MS);
			if (w <= 0)
				die("read from the worker");
			if (write_all(c, reply, (size_t)w) < 0)
				break;
		}
		close(c);
	}
	if (spare >= 0)
		close(spare);
	close(ch); /* the worker's read returns 0 and it exits */
	int st, rc = EXIT_LESSON;
	if (wait_child(pid, WAIT_MS, &st) < 0) {
		/* It did not see end-of-file: something still holds the parent's
		 * end. Not a clean stop - kill it, reap it, and say so. */
		fprintf(stderr, "socketpair: worker %d did not exit within %d ms after the channel "
				"closed: killed\n", (int)pid, WAIT_MS);
		reap_child(pid, 0, &st);
		rc = EXIT_RUNTIME;
	} else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "socketpair: worker %d failed (status %d)\n", (int)pid, st);
		rc = EXIT_RUNTIME;
	}
	close(sfd);
	close(lfd);
	return rc;
}
