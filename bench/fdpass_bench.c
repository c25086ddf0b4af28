/*
 * fdpass_bench.c - how many descriptors per second can one process give
 * another? Two ways, measured the same way (bench/run.py runs this):
 *
 *   fdpass K     a sender writes messages of K descriptors (stage 03's
 *                fdpass_send) into a socketpair as fast as the socket takes
 *                them; a receiver process takes them (fdpass_recv, with
 *                MSG_CMSG_CLOEXEC) and closes each one. The rate is counted
 *                at the receiver: descriptors received and closed per second.
 *   floor K      the same shape with no library and no checks: the bare
 *                sendmsg(2) of one prepared message (K descriptors, one
 *                byte, MSG_NOSIGNAL) in a loop; the receiver's bare
 *                recvmsg(2) (MSG_CMSG_CLOEXEC) and a close of every int in
 *                CMSG_DATA. What fdpass costs is the distance to this floor.
 *   pidfd        no socket: a process copies a descriptor out of another one
 *                with pidfd_getfd(2) (Linux 5.6) and closes it, repeatedly.
 *
 * Run it:  bench/fdpass_bench fdpass 64 [COUNT]
 *          bench/fdpass_bench floor 64 [COUNT]
 *          bench/fdpass_bench pidfd [COUNT]
 * Prints one line: "fds_per_s=N fds=COUNT seconds=S".
 *
 * The descriptor sent is the same open file (/dev/null) over and over, so
 * what is measured is the passing - install in the receiver's table, close -
 * and not the cost of opening files.
 *
 * See also: unix(7) (SCM_RIGHTS), pidfd_open(2), pidfd_getfd(2).
 */
#define _GNU_SOURCE
#include "../03-scm-rights/fdpass.h"
#include "../common/cli.h"
#include "../common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char usage[] = "usage: fdpass_bench fdpass K [COUNT] | floor K [COUNT] | pidfd [COUNT]\n"
			    "  fdpass K   K descriptors per message (1..253), receiver closes each\n"
			    "  floor K    the same with bare sendmsg/recvmsg and no checks\n"
			    "  pidfd      pidfd_getfd(2) + close, repeatedly\n"
			    "  COUNT      descriptors to move (default 400000)\n";

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(long count, double secs)
{
	printf("fds_per_s=%.0f fds=%ld seconds=%.4f\n", (double)count / secs, count, secs);
}

/* ---- fdpass and floor: a sender process, the receiver here -------------- */

/* The sender of the fdpass mode: stage 03's library, every check on. */
static int send_fdpass(int sock, const int *fds, int k, long msgs)
{
	char byte = 'x';
	for (long m = 0; m < msgs; m++)
		if (fdpass_send(sock, &byte, 1, fds, (size_t)k, NULL) != FDPASS_OK)
			return -1;
	return 0;
}

/* The sender of the floor mode: one message built once, sent msgs times. */
static int send_floor(int sock, const int *fds, int k, long msgs)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(FDPASS_MAX_FDS * sizeof(int))];
	} control;
	char byte = 'x';
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			      .msg_controllen = CMSG_SPACE((size_t)k * sizeof(int)) };
	memset(control.buf, 0, msg.msg_controllen);
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN((size_t)k * sizeof(int));
	memcpy(CMSG_DATA(c), fds, (size_t)k * sizeof(int));
	for (long m = 0; m < msgs; m++)
		if (sendmsg(sock, &msg, MSG_NOSIGNAL) != 1)
			return -1;
	return 0;
}

/* The receiver of the fdpass mode: fdpass_recv, then close each. Returns
 * the descriptors received, or -1. */
static long recv_fdpass(int sock, int k, long msgs)
{
	int fds[FDPASS_MAX_FDS];
	char byte;
	long got = 0;
	for (long m = 0; m < msgs; m++) {
		struct fdpass_rx rx = { .buf = &byte, .cap = 1, .fds = fds, .max_fds = (size_t)k };
		if (fdpass_recv(sock, &rx) != FDPASS_OK)
			return -1;
		for (size_t i = 0; i < rx.nfds; i++)
			close(fds[i]);
		got += (long)rx.nfds;
	}
	return got;
}

/* The receiver of the floor mode: bare recvmsg, close every int that came. */
static long recv_floor(int sock, int k, long msgs)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(FDPASS_MAX_FDS * sizeof(int))];
	} control;
	char byte;
	long got = 0;
	for (long m = 0; m < msgs; m++) {
		struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
				      .msg_controllen = CMSG_SPACE((size_t)k * sizeof(int)) };
		if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
			return -1;
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		int n = c ? (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int)) : 0;
		for (int i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
			close(fd);
		}
		got += n;
	}
	return got;
}

/*
 * A sender process writes messages of k descriptors as fast as the socket
 * takes them; this process receives them and closes each one. The rate is
 * counted at the receiver. Each message is one byte with k descriptors:
 * reading one byte per recvmsg takes exactly one message and its
 * descriptors, so the count is exact.
 */
static int bench_pass(int k, long count, int bare)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (null < 0)
		die("open /dev/null");
	long msgs = (count + k - 1) / k;
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) { /* the sender */
		close(sv[0]);
		int fds[FDPASS_MAX_FDS];
		for (int i = 0; i < k; i++)
			fds[i] = null;
		if ((bare ? send_floor : send_fdpass)(sv[1], fds, k, msgs) < 0)
			die("sender: sendmsg");
		_exit(0);
	}
	close(sv[1]);
	close(null);
	double t0 = now_s();
	long got = (bare ? recv_floor : recv_fdpass)(sv[0], k, msgs);
	double secs = now_s() - t0;
	if (got < 0)
		die("receiver: recvmsg");
	close(sv[0]);
	int status;
	if (reap_child(pid, WAIT_MS, &status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
		die("sender");
	if (got != msgs * k)
		die("received %ld descriptors, expected %ld", got, msgs * k);
	report(got, secs);
	return 0;
}

/* ---- pidfd: no socket at all -------------------------------------------- */

static int bench_pidfd(long count)
{
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int ready[2];
	if (null < 0 || pipe2(ready, O_CLOEXEC) < 0)
		die("open/pipe2");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) { /* the target: holds `null` until its pipe says stop */
		close(ready[1]);
		char c;
		(void)!read_within(ready[0], &c, 1, WAIT_MS * 6);
		_exit(0);
	}
	close(ready[0]);
	int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pfd < 0)
		die("pidfd_open");
	double t0 = now_s();
	for (long i = 0; i < count; i++) {
		int fd = (int)syscall(SYS_pidfd_getfd, pfd, null, 0); /* close-on-exec, always */
		if (fd < 0)
			die("pidfd_getfd");
		close(fd);
	}
	double secs = now_s() - t0;
	close(ready[1]);
	close(pfd);
	close(null);
	reap_child(pid, WAIT_MS, NULL);
	report(count, secs);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "--help") == 0) {
		fputs(usage, stdout);
		return 0;
	}
	int bare = argc >= 2 && strcmp(argv[1], "floor") == 0;
	if (argc >= 3 && argc <= 4 && (bare || strcmp(argv[1], "fdpass") == 0))
		return bench_pass((int)parse_long("K", argv[2], 1, FDPASS_MAX_FDS),
				  argc == 4 ? parse_long("COUNT", argv[3], 1, 1L << 40) : 400000, bare);
	if (argc >= 2 && argc <= 3 && strcmp(argv[1], "pidfd") == 0)
		return bench_pidfd(argc == 3 ? parse_long("COUNT", argv[2], 1, 1L << 40) : 400000);
	usage_error("expected: fdpass K [COUNT] | floor K [COUNT] | pidfd [COUNT]");
}
