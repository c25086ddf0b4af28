/*
 * demo_breakit.c - stage 03's break-it switches, each turning on one
 * mistake so that a student sees the failure without editing code:
 *
 *   --zero-byte         the descriptor is sent with an empty payload: on a
 *                       stream channel it never arrives (--channel seqpacket:
 *                       it does)
 *   --small-control     3 descriptors to a worker with room for 1: MSG_CTRUNC,
 *                       and fdpass_recv closes what was installed
 *   --no-cloexec        received without MSG_CMSG_CLOEXEC: the socket leaks
 *                       into a program the worker execs (scm_rights --list-fds)
 *   --classic-receiver  the receiver of the classic books, built for exactly
 *                       one descriptor, is sent two: on a 64-bit ABI both fit
 *                       in CMSG_SPACE(sizeof(int)), no MSG_CTRUNC is set, its
 *                       length check rejects the message - and both leak.
 *                       The same message to fdpass_recv: both closed.
 *
 * Run it:  ./scm_rights --classic-receiver   (and each switch above)
 * Article: Q2 step 3, the receiver the article leaves to the reader.
 * See also: cmsg(3), unix(7) (MSG_CTRUNC, SCM_RIGHTS), recvmsg(2), execve(2)
 * (close-on-exec); UNP 3rd ed. section 15.7 (read_fd).
 */
#define _GNU_SOURCE
#include "scm_rights.h"
#include "../common/cli.h"
#include "../common/util.h"
#include "fdpass.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- --zero-byte and --small-control ------------------------------------ */

void breakit_send(struct nar *n, const struct demo_opts *o, int ch, int fd, int extra[2][2])
{
	if (o->zero_byte) {
		ssize_t r = fdpass_sendmsg_raw(ch, "", 0, &fd, 1);
		say(n, "--zero-byte: sendmsg(fd %d, payload of 0 bytes) = %zd%s", fd, r,
		    o->channel ? ": on a seqpacket socket an empty message is still a message - "
				 "the descriptor travels with it"
			       : ": on a stream socket 0 bytes means nothing was sent - "
				 "the descriptor goes nowhere");
		ev(n, "sendmsg", "worker", "fd=%d bytes=0 result=%zd", fd, r);
		return;
	}
	if (pipe2(extra[0], O_CLOEXEC) < 0 || pipe2(extra[1], O_CLOEXEC) < 0)
		die("pipe2");
	int three[3] = { fd, extra[0][1], extra[1][1] };
	int st = fdpass_send(ch, "c", 1, three, 3, NULL);
	if (st != FDPASS_OK)
		die("fdpass_send: %s", fdpass_strerror(st));
	say(n, "--small-control: sent fds %d, %d, %d (the connection and two pipe write ends) "
	       "to a worker with room for one", fd, extra[0][1], extra[1][1]);
	ev(n, "sendmsg", "worker", "fds=3 bytes=1");
	close(extra[0][1]);
	close(extra[1][1]);
}

void breakit_rejected(const struct nar *n, int st, size_t len, size_t closed, int msg_flags)
{
	say(n, "recvmsg: %s (%zu byte(s) of payload)", fdpass_strerror(st), len);
	if (st == FDPASS_ECTRUNC)
		say(n, "my control buffer had room for 1 int - CMSG_SPACE pads it to 2 on a 64-bit "
		       "ABI, so the kernel installed %zu and dropped the rest itself; fdpass_recv "
		       "closed the %zu installed, so nothing leaks", closed, closed);
	else
		say(n, "fdpass_recv rejected the message and closed the %zu descriptor(s) it "
		       "carried", closed);
	ev(n, "recvmsg", NULL, "result=%s ctrunc=%d closed=%zu",
	   st == FDPASS_ECTRUNC ? "ctrunc" : "rejected", (msg_flags & MSG_CTRUNC) ? 1 : 0, closed);
}

int breakit_lost_closed(struct nar *n, int extra[2][2])
{
	int all = 1;
	for (int i = 0; i < 2; i++) {
		all &= wait_eof(extra[i][0], WAIT_MS);
		close(extra[i][0]);
	}
	say(n, "both pipe read ends see end-of-file: every descriptor of the rejected message "
	       "is closed (by the kernel, or by fdpass_recv)%s", all ? "" : " - NOT!");
	ev(n, "lost_closed", NULL, "all=%d", all);
	return all;
}

/* ---- --no-cloexec: what an exec'd program inherits ---------------------- */

/* Runs `scm_rights --list-fds` in a child of the worker and waits for it. */
void worker_exec(const struct nar *n, int fd)
{
	int flags = fcntl(fd, F_GETFD);
	say(n, "fd %d has FD_CLOEXEC %s; now I exec a program - will it get the socket?", fd,
	    (flags & FD_CLOEXEC) ? "set" : "CLEAR");
	ev(n, "exec", NULL, "fd=%d cloexec=%d", fd, (flags & FD_CLOEXEC) ? 1 : 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* the exec'd program records into the same trace and diagram:
		 * hand it their descriptors under fixed numbers */
		char tfd[16], sfd[16];
		snprintf(tfd, sizeof tfd, "%d", n->trace_fd >= 0 ? dup(n->trace_fd) : -1);
		snprintf(sfd, sizeof sfd, "%d", n->seq_fd >= 0 ? dup(n->seq_fd) : -1);
		execl("/proc/self/exe", "scm_rights", "--list-fds", tfd, sfd, (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || reap_child(pid, WAIT_MS, NULL) < 0)
		say(n, "the exec'd program failed or hung");
}

/* What survived exec, by /proc/self/fd. The descriptors of the trace and the
 * diagram came on purpose (dup without FD_CLOEXEC, named in argv) and are
 * left out; every other one above 2 leaked. One event: inherited=K, where
 * K is the number of sockets among them. */
int list_fds(int trace_fd, int seq_fd)
{
	struct nar n = { .role = "exec", .trace_fd = trace_fd, .seq_fd = seq_fd };
	int fds[256], k = fd_list(fds, 256), sockets = 0;
	char target[128];
	for (int i = 0; i < k && i < 256; i++) {
		if (fds[i] <= 2 || fds[i] == trace_fd || fds[i] == seq_fd ||
		    fd_target(getpid(), fds[i], target, sizeof target) < 0)
			continue;
		say(&n, "after exec I hold fd %d -> %s", fds[i], target);
		sockets += strncmp(target, "socket:", 7) == 0;
	}
	say(&n, "that is every descriptor above 2 that survived exec");
	ev(&n, "inherited", NULL, "sockets=%d", sockets);
	return 0;
}

/* ---- --classic-receiver ------------------------------------------------- */

/*
 * The receiver the article leaves to the reader, as the classic books give
 * it (UNP's read_fd, the man pages' example): room for exactly one int, and
 * a descriptor only if the control message is exactly one int long - else
 * "none was passed". What it never does is look at how many the kernel put
 * there. Returns recvmsg's result; *recvfd is the descriptor or -1;
 * *in_cmsg says how many the message really carried (for the narration).
 */
ssize_t classic_recv_fd(int sock, void *buf, size_t len, int *recvfd, int *in_cmsg)
{
	union {
		struct cmsghdr cm;
		char control[CMSG_SPACE(sizeof(int))]; /* 24 bytes on x86-64: room for 2 */
	} control_un;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control_un.control,
			      .msg_controllen = sizeof control_un.control };
	ssize_t n = recvmsg(sock, &msg, 0);
	*recvfd = -1;
	*in_cmsg = 0;
	if (n <= 0)
		return n;
	struct cmsghdr *cmptr = CMSG_FIRSTHDR(&msg);
	if (cmptr)
		*in_cmsg = (int)((cmptr->cmsg_len - CMSG_LEN(0)) / sizeof(int));
	if (cmptr && cmptr->cmsg_len == CMSG_LEN(sizeof(int)) && cmptr->cmsg_level == SOL_SOCKET &&
	    cmptr->cmsg_type == SCM_RIGHTS)
		memcpy(recvfd, CMSG_DATA(cmptr), sizeof(int));
	/* else: "descriptor was not passed" - and whatever was installed stays open */
	return n;
}

/* The worker of --classic-receiver: the first message to the classic
 * receiver, the second to fdpass_recv, then it waits for the word to exit. */
static int classic_worker(struct nar *n, int ch)
{
	char c;
	int fd, in_cmsg, dummy;
	if (wait_readable(ch, WAIT_MS) <= 0 || classic_recv_fd(ch, &c, 1, &fd, &in_cmsg) != 1)
		return 1;
	say(n, "classic receiver: recvmsg -> 1 byte; the control message holds %d descriptor(s), "
	       "MSG_CTRUNC is clear, cmsg_len != CMSG_LEN(sizeof(int)): \"no descriptor was "
	       "passed\" - and the %d the kernel installed stay open, unknown to me", in_cmsg, in_cmsg);
	ev(n, "recvmsg", NULL, "receiver=classic fd=%d in_cmsg=%d", fd, in_cmsg);
	if (fd >= 0)
		close(fd);
	chan_say(ch, "fd=%d", fd);
	int fds[1];
	struct fdpass_rx rx = { .buf = &c, .cap = 1, .fds = fds, .max_fds = 1 };
	int st = fdpass_recv(ch, &rx);
	say(n, "fdpass_recv: %s; it counted %zu from cmsg_len and closed them all",
	    fdpass_strerror(st), rx.closed);
	ev(n, "recvmsg", NULL, "receiver=fdpass result=%s closed=%zu",
	   st == FDPASS_ETOOMANY ? "toomany" : "other", rx.closed);
	for (size_t i = 0; i < rx.nfds; i++)
		close(fds[i]);
	chan_say(ch, "fd=%d", -1);
	return chan_hear(ch, "go=%d", &dummy) < 0; /* exit: the kernel closes what leaked */
}

/* Sends two descriptors in one message and says so. */
static void send_two(struct nar *n, int ch, int a, int b, const char *what)
{
	int two[2] = { a, b };
	/* told first: the worker may answer before this function returns */
	say(n, "sending fds %d and %d (%s) in one message", a, b, what);
	ev(n, "sendmsg", "worker", "fds=2 bytes=1");
	int st = fdpass_send(ch, "c", 1, two, 2, NULL);
	if (st != FDPASS_OK)
		die("fdpass_send: %s", fdpass_strerror(st));
}

int classic_demo(struct nar *n)
{
	int sv[2], pa[2], pb[2], wfd;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	ev(n, "fork", "worker", "channel=stream");
	pid_t wpid = fork();
	if (wpid < 0)
		die("fork");
	if (wpid == 0) {
		n->role = "worker";
		close(sv[0]);
		int rc = classic_worker(n, sv[1]);
		close(sv[1]);
		_exit(rc);
	}
	close(sv[1]);
	int ch = sv[0];
	struct subject s;
	struct demo_opts so = { .kind = KIND_SOCKET };
	make_subject(n, &so, ch, -1, &s);
	/* after the client's fork: only this process holds the pipes */
	if (pipe2(pa, O_CLOEXEC) < 0 || pipe2(pb, O_CLOEXEC) < 0)
		die("pipe2");

	/* 1. The connection and a pipe's write end, to the classic receiver. */
	send_two(n, ch, s.fd, pa[1], "the connection and a pipe write end");
	close(s.fd), close(pa[1]);
	if (chan_hear(ch, "fd=%d", &wfd) < 0)
		die("no answer from the worker");
	int leaked = !wait_eof(pa[0], ABSENT_MS);
	say(n, "I closed my copies; the pipe's read end %s within %d ms%s", leaked ? "sees NO end-of-file" :
	    "sees end-of-file", ABSENT_MS, leaked ? ": the worker still holds the write end it never saw" : "");
	ev(n, "leak", NULL, "eof=%d waited_ms=%d", !leaked, ABSENT_MS);

	/* 2. The same kind of message to fdpass_recv: both closed at once. */
	send_two(n, ch, pb[1], pb[1], "a pipe write end, twice");
	close(pb[1]);
	if (chan_hear(ch, "fd=%d", &wfd) < 0)
		die("no answer from the worker");
	int fixed = wait_eof(pb[0], WAIT_MS);
	say(n, "that pipe's read end sees end-of-file%s", fixed ? ": nothing leaked" : " - NOT!");
	ev(n, "fixed", NULL, "eof=%d", fixed);

	/* 3. Only the worker's exit closes what the classic receiver leaked. */
	ev(n, "go", "worker", NULL);
	chan_say(ch, "go=%d", 1);
	int st, ok = reap_child(wpid, WAIT_MS, &st) == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
	int at_exit = wait_eof(pa[0], WAIT_MS);
	say(n, "the worker exited, and now the first pipe sees end-of-file%s: a worker that lives "
	       "on leaks 2 descriptors per such message, until EMFILE", at_exit ? "" : " - NOT!");
	ev(n, "exit_closes", NULL, "eof=%d", at_exit);
	close(pa[0]), close(pb[0]);
	(void)!write(s.client_go, "g", 1);
	close(s.client_go);
	if (reap_child(s.client, 2 * WAIT_MS, &st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		ok = 0;
	close(ch);
	close(s.lfd);
	out_line("result: receiver=classic leaked=%d fixed=%d closed_at_exit=%d", leaked, fixed,
		 at_exit);
	return ok && leaked && fixed && at_exit ? EXIT_LESSON : EXIT_RUNTIME;
}
