/*
 * fdpass_test.c - unit tests of fdpass.c, every path the demo and the
 * interop commands cannot reach from outside: the refusals before the
 * kernel is asked, the kernel's own limit, a foreign control message, EOF
 * versus "no descriptor", MSG_NOSIGNAL, a short send, EINTR, a caller's
 * misuse (FDPASS_EINVAL) and a non-blocking socket (FDPASS_EAGAIN).
 *
 * Table-driven, in the manner of the kernel's af_unix selftests
 * (tools/testing/selftests/net/af_unix/): every case runs over each socket
 * type in `variants` (stream, seqpacket, dgram socketpairs), and the table
 * says where the types differ - an empty message, end-of-stream, a peer
 * that is gone, a payload too large for the socket. Each case reads as the
 * story it tells; a case that means nothing for a type (a short send on a
 * type whose messages are all or nothing) is left out of the list.
 *
 * Run:   ./fdpass_test --list          the names, CASE.VARIANT, one a line
 *        ./fdpass_test CASE.VARIANT    one case: prints "ok CASE.VARIANT"
 *                                      and exits 0, or "FAIL ...: line N:
 *                                      what" and exits 1, or "skip ...:
 *                                      why" (a kernel too old) and exits 0
 * tests/test_03_scm_rights.py runs every case. Every descriptor a rejected
 * message carried is proven closed as the other tests do it: we send pipe
 * write ends, close our copies, and the read ends must reach end-of-file.
 *
 * See also: fdpass.h, unix(7), cmsg(3), signal(7) (EINTR).
 */
#define _GNU_SOURCE
#include "../common/util.h"
#include "fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char current[64];

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			char err_[ERRNO_TEXT_LEN];                                         \
			printf("FAIL %s: line %d: %s (errno %s)\n", current, __LINE__,     \
			       #cond, errno_text(errno, err_, sizeof err_));               \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

/* ---- the variants: one socket type each --------------------------------- */

struct variant {
	const char *name;
	int type;
	int empty_is_message; /* a 0-byte send carries descriptors (not stream) */
	int has_eof;          /* a closed peer reads as end-of-stream (not dgram) */
	int gone_errno;       /* sendmsg to a closed peer fails with this */
	int atomic;           /* a message is sent whole or not at all (not stream) */
};

static const struct variant variants[] = {
	{ "stream", SOCK_STREAM, 0, 1, EPIPE, 0 },
	{ "seqpacket", SOCK_SEQPACKET, 1, 1, EPIPE, 1 },
	{ "dgram", SOCK_DGRAM, 1, 0, ECONNREFUSED, 1 },
};

static void pair(const struct variant *v, int sv[2])
{
	CHECK(socketpair(AF_UNIX, v->type | SOCK_CLOEXEC, 0, sv) == 0);
}

/* n pipes; w[i] are the write ends to send, r[i] the read ends we watch. */
static void pipes(int n, int *r, int *w)
{
	for (int i = 0; i < n; i++) {
		int p[2];
		CHECK(pipe2(p, O_CLOEXEC) == 0);
		r[i] = p[0];
		w[i] = p[1];
	}
}

/* The read end reaches end-of-file (bounded): no write end is open anywhere. */
static int eof(int rfd)
{
	char c;
	return read_within(rfd, &c, 1, WAIT_MS) == 0;
}

static void close_all(const int *fds, int n)
{
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

/* Nothing queued on sock: a non-blocking read finds no data and no EOF. */
static int nothing_queued(int sock)
{
	char c;
	return recv(sock, &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN;
}

static int same_inode(int a, int b)
{
	struct stat sa, sb;
	return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
	       sa.st_ino == sb.st_ino;
}

/* fdpass_recv into fresh buffers. */
struct rx {
	char buf[64];
	int fds[FDPASS_MAX_FDS];
	struct fdpass_rx rx;
};

static int recv_into(int sock, struct rx *x, size_t max_fds, unsigned flags)
{
	x->rx = (struct fdpass_rx){ .buf = x->buf, .cap = sizeof x->buf, .fds = x->fds,
				    .max_fds = max_fds, .flags = flags };
	return fdpass_recv(sock, &x->rx);
}

/* ---- the cases ---------------------------------------------------------- */

/* 0 or more than 253 descriptors: refused before the kernel is asked. */
static void send_count(const struct variant *v)
{
	int sv[2], r[1], w[1];
	pair(v, sv);
	pipes(1, r, w);
	size_t sent = 99;
	CHECK(fdpass_send(sv[0], "x", 1, w, 0, &sent) == FDPASS_ECOUNT && errno == EINVAL);
	CHECK(sent == 0);
	int many[FDPASS_MAX_FDS + 1];
	for (int i = 0; i <= FDPASS_MAX_FDS; i++)
		many[i] = w[0];
	CHECK(fdpass_send(sv[0], "x", 1, many, FDPASS_MAX_FDS + 1, NULL) == FDPASS_ECOUNT &&
	      errno == EINVAL);
	CHECK(nothing_queued(sv[1]));
	close_all(sv, 2), close(r[0]), close(w[0]);
}

/* The kernel's own limit, which the refusal above mirrors: SCM_MAX_FD. */
static void kernel_scm_max_fd(const struct variant *v)
{
	int sv[2], r[1], w[1];
	pair(v, sv);
	pipes(1, r, w);
	int many[FDPASS_MAX_FDS + 1];
	for (int i = 0; i <= FDPASS_MAX_FDS; i++)
		many[i] = w[0];
	CHECK(fdpass_sendmsg_raw(sv[0], "x", 1, many, FDPASS_MAX_FDS + 1) < 0 && errno == EINVAL);
	CHECK(fdpass_send(sv[0], "x", 1, many, FDPASS_MAX_FDS, NULL) == FDPASS_OK);
	close(w[0]);
	struct rx x;
	CHECK(recv_into(sv[1], &x, FDPASS_MAX_FDS, 0) == FDPASS_OK);
	CHECK(x.rx.nfds == FDPASS_MAX_FDS && x.rx.len == 1 && !(x.rx.msg_flags & MSG_CTRUNC));
	for (int i = 0; i < FDPASS_MAX_FDS; i++)
		CHECK(same_inode(x.fds[i], r[0]));
	close_all(x.fds, FDPASS_MAX_FDS);
	CHECK(eof(r[0]));
	close_all(sv, 2), close(r[0]);
}

/* An empty payload. On a stream socket the kernel would return 0 and drop
 * the descriptor, so fdpass_send refuses; on seqpacket and dgram a 0-byte
 * message is a message, and the descriptor travels with it. */
static void empty_payload(const struct variant *v)
{
	int sv[2], r[1], w[1];
	pair(v, sv);
	pipes(1, r, w);
	if (!v->empty_is_message) {
		CHECK(fdpass_send(sv[0], "", 0, w, 1, NULL) == FDPASS_EEMPTY && errno == EINVAL);
		CHECK(nothing_queued(sv[1]));
		CHECK(fdpass_sendmsg_raw(sv[0], "", 0, w, 1) == 0); /* the kernel's answer ... */
		CHECK(nothing_queued(sv[1]));                        /* ... and nothing travels */
		close(w[0]);
		CHECK(eof(r[0])); /* nothing in flight holds the write end */
		close_all(sv, 2), close(r[0]);
		return;
	}
	CHECK(fdpass_send(sv[0], "", 0, w, 1, NULL) == FDPASS_OK);
	close(w[0]);
	struct rx x;
	CHECK(recv_into(sv[1], &x, 1, FDPASS_NEED_FD) == FDPASS_OK);
	CHECK(x.rx.len == 0 && x.rx.nfds == 1 && same_inode(x.fds[0], r[0]));
	close(x.fds[0]);
	CHECK(eof(r[0]));
	close_all(sv, 2), close(r[0]);
}

/* MSG_CMSG_CLOEXEC by default; FDPASS_NO_CLOEXEC leaves it out. */
static void cloexec(const struct variant *v)
{
	int sv[2], r[1], w[1];
	pair(v, sv);
	pipes(1, r, w);
	CHECK(fcntl(w[0], F_SETFD, 0) == 0); /* clear on the sender's: it must not matter */
	struct rx x;
	CHECK(fdpass_send(sv[0], "a", 1, w, 1, NULL) == FDPASS_OK);
	CHECK(recv_into(sv[1], &x, 1, 0) == FDPASS_OK && x.rx.nfds == 1);
	CHECK(fcntl(x.fds[0], F_GETFD) == FD_CLOEXEC);
	close(x.fds[0]);
	CHECK(fcntl(w[0], F_SETFD, FD_CLOEXEC) == 0); /* set on the sender's: it does not travel */
	CHECK(fdpass_send(sv[0], "b", 1, w, 1, NULL) == FDPASS_OK);
	CHECK(recv_into(sv[1], &x, 1, FDPASS_NO_CLOEXEC) == FDPASS_OK && x.rx.nfds == 1);
	CHECK(fcntl(x.fds[0], F_GETFD) == 0);
	close(x.fds[0]);
	close_all(sv, 2), close(r[0]), close(w[0]);
}

/* One more than allowed fits in the padding of CMSG_SPACE (on a 64-bit
 * ABI): no MSG_CTRUNC, the kernel installs both; fdpass_recv counts,
 * refuses, closes both. */
static void too_many(const struct variant *v)
{
	int sv[2], r[2], w[2];
	pair(v, sv);
	pipes(2, r, w);
	CHECK(fdpass_send(sv[0], "x", 1, w, 2, NULL) == FDPASS_OK);
	close_all(w, 2);
	struct rx x;
	CHECK(recv_into(sv[1], &x, 1, 0) == FDPASS_ETOOMANY && errno == E2BIG);
	CHECK(x.rx.closed == 2 && x.rx.nfds == 0 && x.rx.len == 1 && !(x.rx.msg_flags & MSG_CTRUNC));
	CHECK(eof(r[0]) && eof(r[1]));
	close_all(r, 2);
	/* max_fds 0: any descriptor is one too many */
	pipes(1, r, w);
	CHECK(fdpass_send(sv[0], "x", 1, w, 1, NULL) == FDPASS_OK);
	close(w[0]);
	CHECK(recv_into(sv[1], &x, 0, 0) == FDPASS_ETOOMANY && x.rx.closed == 1);
	CHECK(eof(r[0]));
	close_all(sv, 2), close(r[0]);
}

/* More than fits: the kernel installs 2 (CMSG_SPACE(4) has room for 2 on a
 * 64-bit ABI), drops the third itself and sets MSG_CTRUNC; fdpass_recv
 * closes the 2. */
static void ctrunc(const struct variant *v)
{
	int sv[2], r[3], w[3];
	pair(v, sv);
	pipes(3, r, w);
	CHECK(fdpass_send(sv[0], "x", 1, w, 3, NULL) == FDPASS_OK);
	close_all(w, 3);
	struct rx x;
	CHECK(recv_into(sv[1], &x, 1, FDPASS_NEED_FD) == FDPASS_ECTRUNC && errno == EMSGSIZE);
	CHECK(x.rx.closed == 2 && x.rx.nfds == 0 && (x.rx.msg_flags & MSG_CTRUNC));
	CHECK(eof(r[0]) && eof(r[1]) && eof(r[2]));
	close_all(sv, 2), close_all(r, 3);
}

/* A message without a descriptor: fine unless one is required. (One send
 * at a time: on a stream socket two sends could be read as one.) */
static void no_fd(const struct variant *v)
{
	int sv[2];
	pair(v, sv);
	struct rx x;
	CHECK(send(sv[0], "ab", 2, 0) == 2);
	CHECK(recv_into(sv[1], &x, 1, FDPASS_NEED_FD) == FDPASS_ENOFD && errno == ENOMSG);
	CHECK(x.rx.len == 2 && x.rx.nfds == 0 && x.rx.closed == 0);
	CHECK(send(sv[0], "cd", 2, 0) == 2);
	CHECK(recv_into(sv[1], &x, 1, 0) == FDPASS_OK && x.rx.len == 2 && x.rx.nfds == 0);
	close_all(sv, 2);
}

/* End-of-stream is not "a message without a descriptor". */
static void eof_is_not_no_fd(const struct variant *v)
{
	int sv[2];
	pair(v, sv);
	struct rx x;
	CHECK(send(sv[0], "x", 1, 0) == 1);
	close(sv[0]);
	CHECK(recv_into(sv[1], &x, 1, 0) == FDPASS_OK && x.rx.len == 1);
	errno = 42;
	CHECK(recv_into(sv[1], &x, 1, FDPASS_NEED_FD) == FDPASS_EOF && errno == 0);
	CHECK(x.rx.len == 0 && x.rx.nfds == 0);
	close(sv[1]);
	if (!v->empty_is_message)
		return;
	/* the documented limit: where an empty message is a message, one
	 * without a descriptor reads as 0 bytes, like end-of-stream */
	pair(v, sv);
	CHECK(send(sv[0], "", 0, 0) == 0);
	CHECK(recv_into(sv[1], &x, 1, 0) == FDPASS_EOF);
	close_all(sv, 2);
}

/* A control message that is not SCM_RIGHTS (SO_PASSCRED makes the kernel
 * add SCM_CREDENTIALS): rejected, and the descriptors that came with it closed. */
static void foreign_cmsg(const struct variant *v)
{
	int sv[2], r[1], w[1], one = 1;
	pair(v, sv);
	pipes(1, r, w);
	CHECK(setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0);
	CHECK(fdpass_send(sv[0], "x", 1, w, 1, NULL) == FDPASS_OK);
	close(w[0]);
	struct rx x;
	CHECK(recv_into(sv[1], &x, 16, 0) == FDPASS_ECMSG && errno == EPROTO);
	CHECK(x.rx.closed == 1 && x.rx.nfds == 0 && !(x.rx.msg_flags & MSG_CTRUNC));
	CHECK(eof(r[0]));
	close_all(sv, 2), close(r[0]);
}

/* MSG_NOSIGNAL: a peer that is gone is an error to handle (EPIPE; a
 * datagram socket says ECONNREFUSED), not a SIGPIPE that kills us. */
static void peer_gone(const struct variant *v)
{
	signal(SIGPIPE, SIG_DFL);
	int sv[2], r[1], w[1];
	pair(v, sv);
	pipes(1, r, w);
	close(sv[1]);
	CHECK(fdpass_send(sv[0], "x", 1, w, 1, NULL) == FDPASS_ESYS && errno == v->gone_errno);
	close(w[0]);
	CHECK(eof(r[0])); /* nothing in flight */
	close(sv[0]), close(r[0]);
}

/* A payload larger than the socket takes at once. A non-blocking stream
 * socket takes part of it: reported, with the byte count, and the
 * descriptor went with the first bytes. A seqpacket or dgram message is
 * all or nothing: EMSGSIZE, and the descriptor did not travel. */
static void large_payload(const struct variant *v)
{
	int sv[2], r[1], w[1];
	pair(v, sv);
	pipes(1, r, w);
	CHECK(fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0);
	size_t len = 16 << 20, sent = 0;
	char *big = calloc(1, len);
	CHECK(big != NULL);
	int st = fdpass_send(sv[0], big, len, w, 1, &sent);
	free(big);
	close(w[0]);
	if (v->atomic) {
		CHECK(st == FDPASS_ESYS && errno == EMSGSIZE && sent == 0);
		CHECK(nothing_queued(sv[1]) && eof(r[0]));
		close_all(sv, 2), close(r[0]);
		return;
	}
	CHECK(st == FDPASS_ESHORT && errno == EMSGSIZE);
	CHECK(sent > 0 && sent < len);
	struct rx x;
	CHECK(recv_into(sv[1], &x, 1, FDPASS_NEED_FD) == FDPASS_OK && x.rx.nfds == 1);
	CHECK(same_inode(x.fds[0], r[0]));
	close(x.fds[0]);
	CHECK(eof(r[0]));
	close_all(sv, 2), close(r[0]);
}

/* The caller's mistakes: FDPASS_EINVAL before any system call - nothing
 * sent, and a message already queued is still there, untouched. */
static void misuse(const struct variant *v)
{
	int sv[2], r[1], w[1];
	pair(v, sv);
	pipes(1, r, w);
	CHECK(fdpass_send(sv[0], "x", 1, NULL, 1, NULL) == FDPASS_EINVAL && errno == EINVAL);
	CHECK(fdpass_send(sv[0], NULL, 1, w, 1, NULL) == FDPASS_EINVAL && errno == EINVAL);
	CHECK(nothing_queued(sv[1]));
	CHECK(fdpass_send(sv[0], "x", 1, w, 1, NULL) == FDPASS_OK);
	close(w[0]);
	char buf[8];
	int fds[1];
	struct fdpass_rx bad[] = {
		{ .buf = NULL, .cap = 8, .fds = fds, .max_fds = 1 },
		{ .buf = buf, .cap = 0, .fds = fds, .max_fds = 1 },
		{ .buf = buf, .cap = 8, .fds = NULL, .max_fds = 1 },
		{ .buf = buf, .cap = 8, .fds = fds, .max_fds = FDPASS_MAX_FDS + 1 },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		CHECK(fdpass_recv(sv[1], &bad[i]) == FDPASS_EINVAL && errno == EINVAL &&
		      bad[i].nfds == 0 && bad[i].closed == 0);
	struct rx x; /* the message waited for a good call */
	CHECK(recv_into(sv[1], &x, 1, FDPASS_NEED_FD) == FDPASS_OK && x.rx.nfds == 1);
	CHECK(same_inode(x.fds[0], r[0]));
	close(x.fds[0]);
	CHECK(eof(r[0]));
	close_all(sv, 2), close(r[0]);
}

/* A non-blocking socket: FDPASS_EAGAIN, with nothing moved. An empty
 * receive queue; then a full send queue, where the descriptor must not
 * travel - the read end of its pipe reaches end-of-file once we close our
 * write end, so no message in flight holds it. */
static void nonblocking(const struct variant *v)
{
	int sv[2], r[1], w[1];
	pair(v, sv);
	pipes(1, r, w);
	CHECK(fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0 && fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0);
	struct rx x;
	CHECK(recv_into(sv[1], &x, 1, 0) == FDPASS_EAGAIN && errno == EAGAIN);
	static char fill[4096];
	size_t filled = 0;
	while (send(sv[0], fill, sizeof fill, MSG_NOSIGNAL) == (ssize_t)sizeof fill)
		filled++;
	CHECK(errno == EAGAIN && filled > 0);
	size_t sent = 99;
	CHECK(fdpass_send(sv[0], "x", 1, w, 1, &sent) == FDPASS_EAGAIN && errno == EAGAIN);
	CHECK(sent == 0);
	close(w[0]);
	CHECK(eof(r[0]));
	close_all(sv, 2), close(r[0]);
}

/* Linux 6.5: SO_PASSPIDFD makes the kernel add SCM_PIDFD, a pidfd of the
 * sender, to every message. fdpass_recv rejects it as foreign - and closes
 * the pidfd too, not just the SCM_RIGHTS descriptors: the count of our own
 * descriptors is the same before and after. */
#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif
static void pidfd_cmsg(const struct variant *v)
{
	int sv[2], r[1], w[1], one = 1, before[512], after[512];
	pair(v, sv);
	if (setsockopt(sv[1], SOL_SOCKET, SO_PASSPIDFD, &one, sizeof one) < 0 && errno == ENOPROTOOPT) {
		printf("skip %s: SO_PASSPIDFD needs Linux 6.5\n", current);
		exit(0);
	}
	pipes(1, r, w);
	CHECK(fdpass_send(sv[0], "x", 1, w, 1, NULL) == FDPASS_OK);
	close(w[0]);
	int nbefore = fd_list(before, 512);
	struct rx x;
	CHECK(recv_into(sv[1], &x, 16, 0) == FDPASS_ECMSG && errno == EPROTO);
	CHECK(x.rx.closed == 2 && x.rx.nfds == 0); /* the pipe's write end and the pidfd */
	CHECK(fd_list(after, 512) == nbefore && nbefore <= 512);
	CHECK(memcmp(before, after, (size_t)nbefore * sizeof(int)) == 0);
	CHECK(eof(r[0]));
	close_all(sv, 2), close(r[0]);
}

/* EINTR: a signal (handler without SA_RESTART) arrives while fdpass_recv
 * waits in recvmsg; it must go back to waiting, and get the message that a
 * child sends only after the handler has run. */
static int sig_pipe = -1;
static void on_usr1(int sig)
{
	(void)sig;
	(void)!write(sig_pipe, "s", 1);
}

static char proc_state(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return '?';
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : '?';
}

static void eintr(const struct variant *v)
{
	int sv[2], sp[2], r[1], w[1];
	pair(v, sv);
	pipes(1, r, w);
	CHECK(pipe2(sp, O_CLOEXEC) == 0);
	sig_pipe = sp[1];
	struct sigaction sa = { .sa_handler = on_usr1 }; /* no SA_RESTART */
	CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
	pid_t me = getpid(), kid = fork();
	CHECK(kid >= 0);
	if (kid == 0) {
		/* wait (bounded) until the parent sleeps - in recvmsg, the only
		 * call that blocks in it - then interrupt it, then send */
		int rc = 1;
		for (int i = 0; i < 2000000 && rc; i++)
			if (proc_state(me) == 'S')
				rc = 0;
		char c;
		if (rc == 0 && kill(me, SIGUSR1) == 0 && read_within(sp[0], &c, 1, WAIT_MS) == 1 &&
		    fdpass_send(sv[0], "x", 1, w, 1, NULL) == FDPASS_OK)
			_exit(0);
		_exit(1);
	}
	close(w[0]);
	struct rx x;
	int st = recv_into(sv[1], &x, 1, FDPASS_NEED_FD);
	int status;
	CHECK(reap_child(kid, WAIT_MS, &status) == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(st == FDPASS_OK && x.rx.nfds == 1 && same_inode(x.fds[0], r[0]));
	close(x.fds[0]);
	CHECK(eof(r[0]));
	close_all(sv, 2), close_all(sp, 2), close(r[0]);
}

/* ---- the table: which case runs over which socket types ----------------- */

enum { STREAM = 1, SEQPACKET = 2, DGRAM = 4, ALL = 7 };

static const struct {
	const char *name;
	void (*run)(const struct variant *v);
	unsigned variants; /* the types for which the case means something */
} cases[] = {
	{ "send_count", send_count, ALL },
	{ "kernel_scm_max_fd", kernel_scm_max_fd, ALL },
	{ "empty_payload", empty_payload, ALL },
	{ "cloexec", cloexec, ALL },
	{ "too_many", too_many, ALL },
	{ "ctrunc", ctrunc, ALL },
	{ "no_fd", no_fd, ALL },
	{ "eof_is_not_no_fd", eof_is_not_no_fd, STREAM | SEQPACKET }, /* dgram has no EOF */
	{ "foreign_cmsg", foreign_cmsg, ALL },
	{ "peer_gone", peer_gone, ALL },
	{ "large_payload", large_payload, ALL },
	{ "misuse", misuse, ALL },
	{ "nonblocking", nonblocking, ALL },
	{ "pidfd_cmsg", pidfd_cmsg, ALL },
	{ "eintr", eintr, ALL },
};

int main(int argc, char **argv)
{
	size_t n = sizeof cases / sizeof cases[0], nv = sizeof variants / sizeof variants[0];
	int list = argc == 2 && strcmp(argv[1], "--list") == 0;
	for (size_t i = 0; argc == 2 && i < n; i++)
		for (size_t k = 0; k < nv; k++) {
			if (!(cases[i].variants & (1u << k)))
				continue;
			snprintf(current, sizeof current, "%s.%s", cases[i].name, variants[k].name);
			if (list) {
				printf("%s\n", current);
			} else if (strcmp(argv[1], current) == 0) {
				cases[i].run(&variants[k]);
				printf("ok %s\n", current);
				return 0;
			}
		}
	if (list)
		return 0;
	fprintf(stderr, "usage: fdpass_test --list | CASE.VARIANT\n");
	return 2;
}
