/*
 * socketpair.c - stage 02: the channel between a parent and its worker.
 *
 * socketpair(AF_UNIX) gives two connected sockets. After fork() both
 * processes hold both ends; each closes the end it does not use, so that
 * when one side closes its end the other sees end-of-file. Messages go both
 * ways. On SOCK_STREAM two writes may arrive as one read (a byte stream has
 * no boundaries); on SOCK_SEQPACKET each write stays one message.
 *
 * Run it:    ./socketpair                    narrated demo, stream then seqpacket
 *            ./socketpair --type seqpacket   one type only
 *            ./socketpair --serve [--port N] a line relay: TCP client -> parent ->
 *                                            worker -> parent -> client
 * Break it:  --keep-unused-end   the worker keeps the parent's end open, so it
 *            never sees end-of-file when the parent closes its own.
 *
 * Article: Q2, step 1 ("create a Unix domain socket connection between the
 * parent and the child as the message channel").
 * See also: socketpair(2), unix(7) (SOCK_STREAM, SOCK_SEQPACKET), fork(2),
 * close(2), recv(2).
 */
#define _GNU_SOURCE
#include "../01-basic-fork/checkpoint.h"
#include "../common/cli.h"
#include "../common/narrate.h"
#include "../common/util.h"
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char usage[] =
	"usage: socketpair [--type stream|seqpacket] [--keep-unused-end] [--trace FILE] [--mermaid]\n"
	"       socketpair --serve [--port N] [--type stream|seqpacket]\n"
	"Stage 02: the parent<->worker channel made with socketpair(AF_UNIX).\n"
	"  --type T           stream or seqpacket (default: the demo shows both)\n"
	"  --keep-unused-end  break it: the worker keeps the parent's end, and never\n"
	"                     sees end-of-file\n" COMMON_USAGE CHECKPOINT_USAGE;

static const char *const type_names[] = { "stream", "seqpacket", NULL };
const int type_values[] = { SOCK_STREAM, SOCK_SEQPACKET };

/*
 * worker: the worker's side of the demo. It closes `unused` (the parent's
 * end; -1 with --keep-unused-end) and talks over ch until the parent's
 * end-of-file; ch and go stay open for the caller (the process exits).
 * `go` is a pipe the parent uses to say "your turn", so that each step
 * happens at a moment the parent chooses and the diagram is the same in
 * every run. Returns the exit status: 0 end-of-file seen, 3 none, 1 failure.
 */
static int worker(const struct nar *n, int ch, int unused, int go, const char *type, const char *cp)
{
	char buf[64], g;
	if (read_within(go, &g, 1, WAIT_MS) != 1)
		return 1;
	/* lesson: close_the_other_end_worker */
	if (unused >= 0) {
		close(unused);
		say(n, "close(fd %d): that end is the parent's; I keep fd %d", unused, ch);
		ev(n, "close", NULL, "fd=%d", unused);
	} else {
		say(n, "--keep-unused-end: I keep the parent's end open as well");
		ev(n, "keep", NULL, "unused_end=1");
	}
	/* end lesson */
	if (checkpoint(cp, "worker") < 0) /* the tests: ch and go, nothing else */
		return 1;
	/* 1. the channel works both ways: a message down, one up */
	ssize_t r = read_within(ch, buf, sizeof buf - 1, WAIT_MS);
	if (r <= 0)
		return 1;
	buf[r] = '\0';
	say(n, "read %zd bytes: \"%s\"", r, buf);
	ev(n, "read", NULL, "bytes=%zd", r);
	const char hello[] = "hello parent";
	ev(n, "write", "parent", "bytes=%zu", strlen(hello));
	if (write_all(ch, hello, strlen(hello)) < 0)
		return 1;

	/* 2. boundaries: the parent wrote "one" and "two" before saying go */
	if (read_within(go, &g, 1, WAIT_MS) != 1)
		return 1;
	int reads = 0;
	size_t total = 0;
	while (total < 6) {
		r = read_within(ch, buf, sizeof buf - 1, WAIT_MS);
		if (r <= 0)
			return 1;
		buf[r] = '\0';
		reads++;
		total += (size_t)r;
		say(n, "read #%d -> %zd bytes: \"%s\"", reads, r, buf);
		ev(n, "read", NULL, "n=%d bytes=%zd", reads, r);
	}
	if (reads == 1)
		say(n, "one read returned both writes: a %s socket is a byte stream, it keeps no "
		       "boundaries", type);
	else
		say(n, "%d reads for 2 writes: a %s socket keeps each message whole", reads, type);
	char count = (char)('0' + reads);
	ev(n, "write", "parent", "bytes=1 reads=%d", reads);
	if (write_all(ch, &count, 1) < 0)
		return 1;

	/* 3. end-of-file: the parent has closed its end and says go */
	if (read_within(go, &g, 1, WAIT_MS) != 1)
		return 1;
	/* lesson: eof_on_the_channel */
	r = read_within(ch, buf, sizeof buf, ABSENT_MS);
	if (r == 0) {
		say(n, "read -> 0: end-of-file, the parent has closed the channel; I can exit");
		ev(n, "eof", NULL, "seen=1");
		return 0;
	}
	say(n, "no end-of-file within %d ms although the parent closed its end: its end is "
	       "still open - in *my* descriptor table", ABSENT_MS);
	ev(n, "eof", NULL, "seen=0 waited_ms=%d", ABSENT_MS);
	return 3;
	/* end lesson */
}

/*
 * demo: one run on one socket type. The parent makes the pair, forks the
 * worker, closes the worker's end, talks, and closes its own end; both ends
 * are closed and the worker is reaped before it returns.
 */
static int demo(struct nar *n, int type, int keep_unused_end, const char *cp)
{
	const char *tname = type_names[type];
	int sv[2], go[2];
	/* lesson: socketpair_fork */
	if (socketpair(AF_UNIX, type_values[type] | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	if (pipe2(go, O_CLOEXEC) < 0)
		die("pipe2");
	say(n, "socketpair(AF_UNIX, SOCK_%s) -> fds %d and %d, connected to each other",
	    type == 0 ? "STREAM" : "SEQPACKET", sv[0], sv[1]);
	ev(n, "socketpair", NULL, "type=%s fd0=%d fd1=%d", tname, sv[0], sv[1]);

	ev(n, "fork", "worker", "fd0=%d fd1=%d", sv[0], sv[1]);
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		n->role = "worker";
		close(go[1]);
		_exit(worker(n, sv[1], keep_unused_end ? -1 : sv[0], go[0], tname, cp));
	}
	close(go[0]);
	say(n, "fork() -> worker %d; both of us now hold both ends", (int)pid);
	close(sv[1]);
	say(n, "close(fd %d): that end is the worker's; I keep fd %d", sv[1], sv[0]);
	ev(n, "close", NULL, "fd=%d", sv[1]);
	int ch = sv[0];
	/* end lesson */
	if (checkpoint(cp, "parent") < 0) /* the tests: ch and go[1], nothing else */
		die("checkpoint");

	char buf[64];
	const char hello[] = "hello worker";
	ev(n, "write", "worker", "bytes=%zu", strlen(hello));
	if (write_all(ch, hello, strlen(hello)) < 0)
		die("write");
	(void)!write(go[1], "g", 1);
	ssize_t r = read_within(ch, buf, sizeof buf - 1, WAIT_MS);
	if (r <= 0)
		die("read from the worker");
	buf[r] = '\0';
	say(n, "read %zd bytes: \"%s\"", r, buf);
	ev(n, "read", NULL, "bytes=%zd", r);

	ev(n, "write", "worker", "bytes=3 text=one");
	ev(n, "write", "worker", "bytes=3 text=two");
	if (write_all(ch, "one", 3) < 0 || write_all(ch, "two", 3) < 0)
		die("write");
	say(n, "two writes, \"one\" and \"two\", both queued before the worker reads");
	(void)!write(go[1], "g", 1);
	if (read_within(ch, buf, 1, WAIT_MS) != 1 || buf[0] < '1' || buf[0] > '2')
		die("read the worker's count");
	int reads = buf[0] - '0';

	close(ch);
	if (keep_unused_end)
		say(n, "close(fd %d): my last descriptor for this end - but the worker still holds a "
		       "copy of it, so the end stays open", ch);
	else
		say(n, "close(fd %d): the last descriptor for this end - the worker should see "
		       "end-of-file", ch);
	ev(n, "close", NULL, "fd=%d", ch);
	(void)!write(go[1], "g", 1);
	close(go[1]);

	int st;
	if (reap_child(pid, WAIT_MS + ABSENT_MS, &st) < 0 || !WIFEXITED(st) ||
	    (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 3))
		die("worker %d failed", (int)pid);
	int eof = WEXITSTATUS(st) == 0;
	out_line("result: type=%s writes=2 reads=%d eof_seen=%d kept_unused_end=%d", tname, reads, eof,
		 keep_unused_end);
	int expect_reads = type == 0 ? 1 : 2;
	return reads == expect_reads && eof == !keep_unused_end ? EXIT_LESSON : EXIT_RUNTIME;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "type", required_argument, NULL, OPT_STAGE },
		{ "keep-unused-end", no_argument, NULL, OPT_STAGE + 1 },
		{ "checkpoint", required_argument, NULL, OPT_STAGE + 2 },
		{ 0 },
	};
	struct common_opts o = { 0 };
	int type = -1, keep = 0, c;
	const char *cp = NULL;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&o, c, optarg, usage))
			continue;
		if (c == OPT_STAGE)
			type = parse_choice("--type", optarg, type_names);
		else if (c == OPT_STAGE + 1)
			keep = 1;
		else
			cp = optarg;
	}
	common_done(&o, argc, argv, usage);
	if (o.serve && keep)
		usage_error("--keep-unused-end is for the demo, not --serve");
	signal(SIGPIPE, SIG_IGN);

	struct nar n;
	if (nar_open(&n, "parent", o.trace, o.mermaid) < 0)
		die("open trace file");
	int rc;
	if (o.serve) {
		rc = serve(&n, o.port, type < 0 ? 1 : type, cp);
	} else if (type >= 0) {
		rc = demo(&n, type, keep, cp);
	} else {
		say(&n, "first on a stream socket, then on a seqpacket socket");
		rc = demo(&n, 0, keep, cp);
		if (rc == EXIT_LESSON)
			rc = demo(&n, 1, keep, cp);
	}
	if (o.mermaid)
		nar_mermaid(&n, stdout);
	nar_close(&n);
	return rc;
}
