/*
 * basic_fork.c - stage 01: the child inherits what was open before fork().
 *
 * The parent accepts a connection and forks; the child serves it through the
 * descriptor it inherited (it echoes each line back, tagged with its pid) and
 * the parent closes its own copy. Then the article's motivation: a worker
 * forked *before* the connection was accepted has no descriptor for it, so a
 * pre-forked server must pass descriptors (stages 02 and 03).
 *
 * Run it:    ./basic_fork                      narrated demo, built-in client
 *            ./basic_fork --serve [--port N]   an echo server for nc/Python
 * Break it:  --keep-parent-copy   the parent keeps its copy of the connection:
 *            when the child closes, the client never sees end-of-file.
 *
 * Article: "Motivation" (a child inherits only what was open at fork time).
 * See also: fork(2) ("The child inherits copies of the parent's set of open
 * file descriptors"), accept(2), close(2), shutdown(2), proc(5) /proc/PID/fd.
 */
#define _GNU_SOURCE
#include "checkpoint.h"
#include "demo_client.h"
#include "../common/cli.h"
#include "../common/narrate.h"
#include "../common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CHILDREN 64

static const char usage[] =
	"usage: basic_fork [--keep-parent-copy] [--trace FILE] [--mermaid]\n"
	"       basic_fork --serve [--port N] [--keep-parent-copy]\n"
	"Stage 01: a child serves a connection through a descriptor it inherited by fork().\n"
	"  --keep-parent-copy  break it: the parent does not close its copy, so the\n"
	"                      client never sees end-of-file\n" COMMON_USAGE CHECKPOINT_USAGE;

static unsigned long inode_of(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

/* The child's whole job: echo lines back on conn, tagged, until the client's
 * end-of-file. conn stays open; the caller closes it. */
static void echo_lines(const struct nar *n, int conn)
{
	char line[512], reply[600];
	ssize_t len;
	int served = 0;
	while ((len = read_line(conn, line, sizeof line, WAIT_MS * 3)) > 0) {
		if (!served++) /* recorded here, not at fork, so the diagram order is fixed */
			ev(n, "inherited", NULL, "fd=%d inode=%lu", conn, inode_of(conn));
		/* the tag, then the bytes as they came (a NUL among them included),
		 * then a '\n' if the line was cut short */
		size_t r = (size_t)snprintf(reply, sizeof reply, "[%s %d] ", n->role, (int)getpid());
		memcpy(reply + r, line, (size_t)len);
		r += (size_t)len;
		if (line[len - 1] != '\n')
			reply[r++] = '\n';
		ev(n, "echo", "client", "fd=%d bytes=%zd", conn, len);
		if (write_all(conn, reply, r) < 0)
			break;
	}
	if (len < 0 && errno == ETIMEDOUT)
		say(n, "the client was silent for %d s; giving up on it", WAIT_MS * 3 / 1000);
}

/* The narrated demo: the early worker, the built-in client, the child that
 * serves the connection. Every descriptor it opens is closed before it
 * returns; every child is reaped. */
static int demo(struct nar *n, int keep_parent_copy, const char *cp)
{
	int port, lfd = listen_loopback(0, &port);
	if (lfd < 0)
		die("socket/bind/listen on 127.0.0.1");
	say(n, "listening on 127.0.0.1:%d (fd %d)", port, lfd);
	ev(n, "listen", NULL, "fd=%d port=%d", lfd, port);

	/* Fork a worker now, before any connection exists: the pre-fork design. */
	int ip[2];
	if (pipe2(ip, O_CLOEXEC) < 0)
		die("pipe2");
	pid_t early = fork();
	if (early < 0)
		die("fork");
	if (early == 0) {
		n->role = "worker";
		close(ip[1]);
		close(lfd);
		if (checkpoint(cp, "early-worker") < 0) /* the tests: ip[0] only */
			die("worker: checkpoint");
		unsigned long inode = 0;
		char num[32] = "";
		if (read_within(ip[0], num, sizeof num - 1, WAIT_MS) > 0)
			inode = strtoul(num, NULL, 10);
		char want[64], have[64];
		snprintf(want, sizeof want, "socket:[%lu]", inode);
		int fds[256], k = fd_list(fds, 256), found = 0;
		for (int i = 0; i < k && i < 256; i++)
			if (fd_target(getpid(), fds[i], have, sizeof have) == 0 && strcmp(have, want) == 0)
				found = 1;
		say(n, "I was forked before accept(): my /proc/self/fd has %d entries and %s %s",
		    k, found ? "DOES hold" : "no", want);
		say(n, "nothing can reach this connection from here; it must be passed to me (stage 03)");
		ev(n, "proc_fd", NULL, "inode=%lu found=%d", inode, found);
		_exit(found ? 1 : 0);
	}
	close(ip[0]);
	say(n, "forked an early worker (pid %d) before accepting anything", (int)early);
	ev(n, "fork", "worker", "peer_pid=%d", (int)early);

	int go[2];
	if (pipe2(go, O_CLOEXEC) < 0)
		die("pipe2");
	pid_t cli = fork();
	if (cli < 0)
		die("fork");
	if (cli == 0) {
		n->role = "client";
		close(go[1]);
		close(lfd);
		close(ip[1]);
		_exit(demo_client(n, port, go[0], cp));
	}
	close(go[0]);

	int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (conn < 0)
		die("accept");
	unsigned long inode = inode_of(conn);
	say(n, "accept() -> fd %d, socket:[%lu]: this connection exists only from now on", conn, inode);
	ev(n, "accept", NULL, "fd=%d inode=%lu", conn, inode);
	dprintf(ip[1], "%lu", inode);
	close(ip[1]);
	int est, ok = 1;
	if (reap_child(early, WAIT_MS, &est) < 0 || !WIFEXITED(est) || WEXITSTATUS(est) != 0)
		ok = 0;

	/* lesson: fork_after_accept */
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		n->role = "child";
		close(lfd); /* a child that serves one connection does not accept */
		close(go[1]);
		if (checkpoint(cp, "child") < 0) /* the tests: conn, and nothing else */
			die("child: checkpoint");
		say(n, "I inherited fd %d (socket:[%lu]) from my parent: serving it", conn,
		    inode_of(conn));
		echo_lines(n, conn);
		say(n, "the client is done; close(fd %d)", conn);
		ev(n, "close", NULL, "fd=%d", conn);
		close(conn);
		_exit(0);
	}
	say(n, "fork() -> child %d, which inherits fd %d", (int)child, conn);
	ev(n, "fork", "child", "peer_pid=%d fd=%d", (int)child, conn);
	if (!keep_parent_copy) {
		close(conn);
		say(n, "close(fd %d): my copy; the connection lives on in the child, and ends "
		       "when the child closes it", conn);
		ev(n, "close", NULL, "fd=%d", conn);
	} else {
		say(n, "--keep-parent-copy: I keep fd %d open. The connection ends only when "
		       "*every* descriptor for it is closed", conn);
		ev(n, "keep", NULL, "fd=%d", conn);
	}
	/* end lesson */
	(void)!write(go[1], "g", 1); /* client: the child is there, start talking */

	int st;
	if (reap_child(child, WAIT_MS, &st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		ok = 0;
	say(n, "child %d exited; telling the client to look for end-of-file", (int)child);
	(void)!write(go[1], "g", 1);
	close(go[1]);
	int cst;
	if (reap_child(cli, WAIT_MS + ABSENT_MS, &cst) < 0 || !WIFEXITED(cst))
		ok = 0;
	int eof_seen = WIFEXITED(cst) && WEXITSTATUS(cst) == 0;
	if (keep_parent_copy) {
		char target[64] = "?";
		fd_target(getpid(), conn, target, sizeof target);
		say(n, "my fd %d is still %s: that is the reference keeping the connection open", conn,
		    target);
		close(conn);
		ev(n, "close", NULL, "fd=%d late=1", conn);
	}
	close(lfd);
	out_line("result: eof_seen=%d parent_kept_copy=%d", eof_seen, keep_parent_copy);
	/* The lesson happened if the client saw EOF exactly when the parent let go. */
	return ok && eof_seen == !keep_parent_copy ? EXIT_LESSON : EXIT_RUNTIME;
}

/*
 * --serve: fork a child per connection, as in the article's rejected
 * design. Each child owns its connection and closes everything else it
 * inherited; the parent closes its copy (or, --keep-parent-copy, keeps it
 * until shutdown). Children are reaped; every descriptor is closed on return.
 */
static int serve(struct nar *n, int port, int keep_parent_copy, const char *cp)
{
	int lfd = listen_loopback(port, &port);
	if (lfd < 0)
		die("socket/bind/listen on 127.0.0.1:%d", port);
	int sfd = signal_fd(1);
	if (sfd < 0)
		die("signalfd");
	int spare = spare_fd();
	announce_listening(port);
	pid_t kids[MAX_CHILDREN] = { 0 };
	int kept[MAX_CHILDREN], nkept = 0, running = 1;
	while (running) {
		struct pollfd p[2] = { { .fd = lfd, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0) { /* waits for a client or a signal, both always possible */
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (p[1].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) == sizeof si)
				if (si.ssi_signo != SIGCHLD)
					running = 0;
			for (int i = 0; i < MAX_CHILDREN; i++)
				if (kids[i] && waitpid(kids[i], NULL, WNOHANG) == kids[i])
					kids[i] = 0;
		}
		if (!running || !(p[0].revents & POLLIN))
			continue;
		int conn = accept_shedding(lfd, &spare);
		if (conn < 0)
			continue; /* the client may be gone (ECONNABORTED), or we are out of fds */
		int slot = 0;
		while (slot < MAX_CHILDREN && kids[slot])
			slot++;
		if (slot == MAX_CHILDREN || (keep_parent_copy && nkept == MAX_CHILDREN)) {
			say(n, "%s: refusing fd %d",
			    slot == MAX_CHILDREN ? "all children busy" : "too many kept copies", conn);
			close(conn);
			continue;
		}
		pid_t child = fork();
		if (child < 0) {
			say(n, "fork: %s; closing fd %d", strerror(errno), conn);
			close(conn);
			continue;
		}
		/* lesson: fork_per_connection */
		if (child == 0) {
			n->role = "child";
			close(lfd); /* the listener is the parent's: a child only serves */
			close(sfd);
			if (spare >= 0)
				close(spare);
			/* --keep-parent-copy: the connections the parent kept were
			 * inherited too; a child serves only its own */
			for (int i = 0; i < nkept; i++)
				close(kept[i]);
			if (checkpoint(cp, "child") < 0) /* the tests: conn, and nothing else */
				die("child: checkpoint");
			unblock_signals();
			echo_lines(n, conn);
			close(conn);
			_exit(0);
		}
		kids[slot] = child;
		if (keep_parent_copy)
			kept[nkept++] = conn;
		else
			close(conn); /* the child's copy is the one that serves */
		/* end lesson */
		/* said after the close, so a reader of this line knows it happened */
		say(n, "accept() -> fd %d, child %d serves it; %s", conn, (int)child,
		    keep_parent_copy ? "I keep my copy (--keep-parent-copy)" : "my copy is closed");
	}
	say(n, "shutting down: stopping %s", "children");
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (kids[i]) {
			kill(kids[i], SIGTERM);
			reap_child(kids[i], WAIT_MS, NULL);
		}
	for (int i = 0; i < nkept; i++)
		close(kept[i]);
	if (spare >= 0)
		close(spare);
	close(sfd);
	close(lfd);
	return EXIT_LESSON;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "keep-parent-copy", no_argument, NULL, OPT_STAGE },
		{ "checkpoint", required_argument, NULL, OPT_STAGE + 1 },
		{ 0 },
	};
	struct common_opts o = { 0 };
	int keep_parent_copy = 0, c;
	const char *cp = NULL;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&o, c, optarg, usage))
			continue;
		if (c == OPT_STAGE)
			keep_parent_copy = 1;
		else
			cp = optarg;
	}
	common_done(&o, argc, argv, usage);
	signal(SIGPIPE, SIG_IGN); /* a client that left is an EPIPE, handled where it happens */

	struct nar n;
	if (nar_open(&n, "parent", o.trace, o.mermaid) < 0)
		die("open trace file");
	int rc = o.serve ? serve(&n, o.port, keep_parent_copy, cp) : demo(&n, keep_parent_copy, cp);
	if (o.mermaid)
		nar_mermaid(&n, stdout);
	nar_close(&n);
	return rc;
}
