/*
 * newer_kernels.c - what a reader of a 2015 article could not know: the
 * kernel has since learnt new ways to pass, refuse and identify. One
 * section per feature, each proving its claim by running it:
 *
 *   pidfd_getfd   Linux 5.6: copy a descriptor out of another process with
 *                 no socket at all, given ptrace access over it
 *   peerpidfd     Linux 6.5: SO_PEERPIDFD, the peer of a Unix socket as a
 *                 pidfd - unlike SO_PEERCRED's pid, it can never name a
 *                 different process after the peer exits
 *   scm_pidfd     Linux 6.5: SO_PASSPIDFD adds SCM_PIDFD, a pidfd of the
 *                 sender, to every message received
 *   passrights    Linux 6.16: SO_PASSRIGHTS off - a socket that refuses
 *                 descriptors; the sender's sendmsg fails with EPERM
 *   toomanyrefs   descriptors in flight are limited by the sender's
 *                 RLIMIT_NOFILE unless it has CAP_SYS_RESOURCE: ETOOMANYREFS
 *   inet          descriptors pass only over AF_UNIX, between processes of
 *                 one host: on a TCP socket SCM_RIGHTS is silently ignored
 *
 * Run it:  ./newer_kernels [SECTION...]      (no argument: every section)
 * Each section prints narration lines and one line
 *   result: feature=NAME key=value ...
 * or, where the running kernel lacks the feature,
 *   skip: feature=NAME needs Linux X.Y (ERRNO)
 * Exit 0 when every section that ran showed what it claims, 1 if not.
 *
 * Article: "what a 2015 reader could not know" (stage 03 README).
 * See also: pidfd_open(2), pidfd_getfd(2), pidfd_send_signal(2), unix(7)
 * (SO_PEERPIDFD, SO_PASSPIDFD, SCM_PIDFD, SO_PASSRIGHTS, ETOOMANYREFS),
 * getrlimit(2), capabilities(7); net/unix/af_unix.c, net/unix/garbage.c
 * (too_many_unix_fds).
 */
#define _GNU_SOURCE
#include "../common/cli.h"
#include "../common/narrate.h"
#include "../common/util.h"
#include "fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* Older headers (Debian 12's) do not name these yet. */
#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83
#endif
#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04
#endif

static const char usage[] =
	"usage: newer_kernels [pidfd_getfd|peerpidfd|scm_pidfd|passrights|toomanyrefs|inet]...\n"
	"What newer kernels added to descriptor passing; no argument: every section.\n";

/* ---- small helpers ------------------------------------------------------ */

static const char *ename(int err)
{
	const char *name = strerrorname_np(err);
	return name ? name : "?";
}

/* The "skip" line: the kernel lacks what a section needs. Returns 1 (not a failure). */
static int skip(const char *feature, const char *version, int err)
{
	out_line("skip: feature=%s needs Linux %s (%s)", feature, version, ename(err));
	return 1;
}

/* The pid a pidfd refers to, from /proc/self/fdinfo ("Pid:" line; -1 once
 * the process is gone), or -2 if it cannot be read. */
static int pidfd_pid(int pidfd)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -2;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	char *p = strstr(buf, "\nPid:");
	return p ? atoi(p + 5) : -2;
}

/* A child that keeps every descriptor it inherited until `done` (its read
 * end done_r) has a byte or reaches EOF, then exits. */
static pid_t holder(int done_r, int done_w)
{
	pid_t pid = fork();
	if (pid == 0) {
		char c;
		close(done_w);
		(void)!read_within(done_r, &c, 1, WAIT_MS);
		_exit(0);
	}
	return pid;
}

/* Drops to nobody (65534) in this process: no capabilities left. -1/errno. */
static int become_nobody(void)
{
	return setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0 ? -1 : 0;
}

/* ---- pidfd_getfd (5.6) -------------------------------------------------- */

static int sec_pidfd_getfd(const struct nar *n)
{
	int p[2], done[2];
	if (pipe2(p, O_CLOEXEC) < 0 || pipe2(done, O_CLOEXEC) < 0)
		die("pipe2");
	pid_t pid = holder(done[0], done[1]);
	if (pid < 0)
		die("fork");
	close(done[0]);
	/* the child holds p[1] under the same number; we drop ours, so the
	 * copy we take from the child is the only one in this process */
	int child_fd = p[1];
	close(p[1]);
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	int fd = pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, child_fd, 0);
	if (fd < 0 && errno == ENOSYS) {
		close(done[1]), close(p[0]);
		reap_child(pid, WAIT_MS, NULL);
		return skip("pidfd_getfd", "5.6", ENOSYS);
	}
	if (fd < 0)
		die("pidfd_getfd");
	int same = same_file(getpid(), fd, pid, child_fd) == 0;
	int cloexec = (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
	say(n, "pidfd_getfd(pidfd of %d, its fd %d) -> my fd %d: kcmp says %s; FD_CLOEXEC %s",
	    (int)pid, child_fd, fd, same ? "the same open file" : "NOT the same file",
	    cloexec ? "set (always)" : "clear");
	/* Without ptrace access it is refused: a process run as nobody asks
	 * the same of our (root's) child. */
	int unpriv = 0;
	if (geteuid() == 0) {
		pid_t k = fork();
		if (k == 0)
			_exit(become_nobody() < 0 ? 100
			      : syscall(SYS_pidfd_getfd, pidfd, child_fd, 0) >= 0 ? 0 : errno);
		int st;
		if (k < 0 || reap_child(k, WAIT_MS, &st) < 0 || !WIFEXITED(st))
			die("the unprivileged try");
		unpriv = WEXITSTATUS(st);
		say(n, "the same call from a process run as nobody: %s - it needs ptrace access "
		       "(PTRACE_MODE_ATTACH_REALCREDS) over the target", unpriv ? ename(unpriv) : "allowed");
	}
	/* the copy works: write into the pipe through it, read from ours */
	int wrote = write(fd, "!", 1) == 1;
	char c = 0;
	int got = read_within(p[0], &c, 1, WAIT_MS) == 1 && c == '!';
	close(fd), close(pidfd), close(p[0]), close(done[1]);
	int st;
	reap_child(pid, WAIT_MS, &st);
	out_line("result: feature=pidfd_getfd same_file=%d cloexec=%d works=%d unprivileged=%s", same,
		 cloexec, wrote && got, geteuid() == 0 ? (unpriv ? ename(unpriv) : "allowed") : "not_tried");
	return same && cloexec && wrote && got;
}

/* ---- SO_PEERPIDFD and SCM_PIDFD (6.5) ----------------------------------- */

static int sec_peerpidfd(const struct nar *n)
{
	/* a named (abstract) socket: for a socketpair the "peer" is its creator */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path + 1, sizeof sa.sun_path - 1, "newer_kernels.%d", (int)getpid());
	socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
				      strlen(sa.sun_path + 1));
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), done[2];
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, salen) < 0 || listen(lfd, 1) < 0 ||
	    pipe2(done, O_CLOEXEC) < 0)
		die("socket/bind/listen (abstract)");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		char c;
		int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		close(done[1]);
		if (s < 0 || connect(s, (struct sockaddr *)&sa, salen) < 0)
			_exit(1);
		(void)!read_within(done[0], &c, 1, WAIT_MS);
		_exit(0);
	}
	close(done[0]);
	int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC), pidfd = -1;
	socklen_t len = sizeof pidfd;
	if (conn < 0)
		die("accept4");
	pid_t cred_pid = 0;
	fdpass_peer(conn, &cred_pid, NULL, NULL);
	int r = getsockopt(conn, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len);
	int err = errno;
	close(done[1]);
	int st;
	reap_child(pid, WAIT_MS, &st); /* the peer is gone now */
	if (r < 0) {
		close(conn), close(lfd);
		if (err == ENOPROTOOPT)
			return skip("peerpidfd", "6.5", err);
		errno = err;
		die("getsockopt(SO_PEERPIDFD)");
	}
	int was = cred_pid == pid, now = pidfd_pid(pidfd);
	int sig = (int)syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0 ? errno : 0;
	say(n, "SO_PEERCRED says pid %d; SO_PEERPIDFD gave a pidfd for the same process. After "
	       "it exited: the pid is a number anyone may get next, the pidfd says %s",
	    (int)cred_pid, sig ? ename(sig) : "alive?!");
	close(pidfd), close(conn), close(lfd);
	out_line("result: feature=peerpidfd pid_matches=%d after_exit=%s fdinfo_pid=%d", was,
		 sig ? ename(sig) : "none", now);
	return was && sig == ESRCH && now == -1;
}

static int sec_scm_pidfd(const struct nar *n)
{
	int sv[2], one = 1;
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	if (setsockopt(sv[1], SOL_SOCKET, SO_PASSPIDFD, &one, sizeof one) < 0) {
		int err = errno;
		close(sv[0]), close(sv[1]);
		return err == ENOPROTOOPT ? skip("scm_pidfd", "6.5", err) : (die("SO_PASSPIDFD"), 0);
	}
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		_exit(send(sv[0], "x", 1, MSG_NOSIGNAL) == 1 ? 0 : 1);
	int st;
	reap_child(pid, WAIT_MS, &st);
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	char c;
	struct iovec iov = { .iov_base = &c, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			      .msg_controllen = sizeof control.buf };
	if (recvmsg(sv[1], &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT) != 1)
		die("recvmsg");
	int pidfd = -1;
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_PIDFD)
		memcpy(&pidfd, CMSG_DATA(cm), sizeof pidfd);
	int who = pidfd >= 0 ? pidfd_pid(pidfd) : -2;
	say(n, "the message from child %d came with SCM_PIDFD: fd %d, a pidfd of the sender "
	       "(it has exited since: fdinfo says Pid %d)", (int)pid, pidfd, who);
	if (pidfd >= 0)
		close(pidfd);
	close(sv[0]), close(sv[1]);
	out_line("result: feature=scm_pidfd pidfd_received=%d", pidfd >= 0);
	return pidfd >= 0;
}

/* ---- SO_PASSRIGHTS (6.16) ----------------------------------------------- */

static int sec_passrights(const struct nar *n)
{
	int sv[2], p[2], zero = 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 || pipe2(p, O_CLOEXEC) < 0)
		die("socketpair/pipe2");
	if (setsockopt(sv[1], SOL_SOCKET, SO_PASSRIGHTS, &zero, sizeof zero) < 0) {
		int err = errno;
		close(sv[0]), close(sv[1]), close(p[0]), close(p[1]);
		return err == ENOPROTOOPT ? skip("passrights", "6.16", err) : (die("SO_PASSRIGHTS"), 0);
	}
	int st = fdpass_send(sv[0], "x", 1, &p[1], 1, NULL);
	int err = st == FDPASS_ESYS ? errno : 0;
	char c;
	int data = send(sv[0], "y", 1, MSG_NOSIGNAL) == 1 && recv(sv[1], &c, 1, MSG_DONTWAIT) == 1 &&
		   c == 'y';
	say(n, "the receiver turned SO_PASSRIGHTS off: sendmsg with SCM_RIGHTS -> %s; plain data "
	       "still flows (%s)", err ? ename(err) : fdpass_strerror(st), data ? "yes" : "no");
	close(p[1]);
	int eof = wait_eof(p[0], WAIT_MS); /* nothing in flight holds the write end */
	close(p[0]), close(sv[0]), close(sv[1]);
	out_line("result: feature=passrights send=%s data=%d nothing_in_flight=%d",
		 err ? ename(err) : "ok", data, eof);
	return err == EPERM && data && eof;
}

/* ---- ETOOMANYREFS: descriptors in flight, per user ---------------------- */

/* In a child: RLIMIT_NOFILE = limit, optionally dropped to nobody, then
 * one descriptor per message until sendmsg fails (or 4 * limit went). The
 * child's exit status: messages sent; the errno comes through a pipe. */
static void in_flight(int limit, int drop, int *sent, int *err)
{
	int rep[2];
	if (pipe2(rep, O_CLOEXEC) < 0)
		die("pipe2");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		int sv[2], e = 0, k = 0;
		struct rlimit rl = { (rlim_t)limit, (rlim_t)limit };
		close(rep[0]);
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ||
		    setrlimit(RLIMIT_NOFILE, &rl) < 0 || (drop && become_nobody() < 0))
			e = errno;
		/* nobody reads sv[1]: every message stays in flight */
		for (; !e && k < 4 * limit; k++)
			if (fdpass_send(sv[0], "x", 1, &sv[0], 1, NULL) != FDPASS_OK)
				e = errno;
		if (e)
			k--;
		char line[32];
		int len = snprintf(line, sizeof line, "%d %d\n", k, e);
		_exit(write(rep[1], line, (size_t)len) == len ? 0 : 1);
	}
	close(rep[1]);
	char line[32] = "";
	if (read_line(rep[0], line, sizeof line, WAIT_MS) <= 0 || sscanf(line, "%d %d", sent, err) != 2)
		die("the child's report");
	close(rep[0]);
	reap_child(pid, WAIT_MS, NULL);
}

static int sec_toomanyrefs(const struct nar *n)
{
	const int limit = 16;
	int sent, err, psent = -1, perr = -1;
	in_flight(limit, geteuid() == 0, &sent, &err);
	say(n, "as nobody, RLIMIT_NOFILE %d: %d messages of 1 descriptor went, then sendmsg: %s - "
	       "the kernel counts descriptors in flight per user against the sender's limit",
	    limit, sent, err ? ename(err) : "no error");
	if (geteuid() == 0) {
		in_flight(limit, 0, &psent, &perr);
		say(n, "as root (CAP_SYS_RESOURCE), same limit: %d went, %s", psent,
		    perr ? ename(perr) : "no error");
	}
	out_line("result: feature=toomanyrefs limit=%d sent=%d error=%s privileged_sent=%d "
		 "privileged_error=%s", limit, sent, err ? ename(err) : "none", psent,
		 perr > 0 ? ename(perr) : "none");
	return err == ETOOMANYREFS && (geteuid() != 0 || perr == 0);
}

/* ---- inet: AF_UNIX only ------------------------------------------------- */

static int sec_inet(const struct nar *n)
{
	int port, lfd = listen_loopback(0, &port);
	int c = lfd < 0 ? -1 : connect_loopback(port);
	int a = c < 0 ? -1 : accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	int p[2];
	if (a < 0 || pipe2(p, O_CLOEXEC) < 0)
		die("loopback TCP");
	/* TCP accepts an SCM_RIGHTS control message and ignores it
	 * (__sock_cmsg_send in net/core/sock.c lets it pass): the byte goes,
	 * the descriptor does not */
	ssize_t r = fdpass_sendmsg_raw(c, "x", 1, &p[1], 1);
	char byte;
	int fds[1];
	struct fdpass_rx rx = { .buf = &byte, .cap = 1, .fds = fds, .max_fds = 1 };
	int st = r == 1 && wait_readable(a, WAIT_MS) == 1 ? fdpass_recv(a, &rx) : -1;
	say(n, "sendmsg with SCM_RIGHTS on a TCP socket -> %zd: the byte arrived, %zu descriptor(s) "
	       "with it. A descriptor indexes a table of THIS kernel; only AF_UNIX, between "
	       "processes of one host, carries it", r, rx.nfds);
	for (size_t i = 0; i < rx.nfds; i++)
		close(fds[i]);
	close(p[1]);
	int eof = wait_eof(p[0], WAIT_MS); /* and nothing holds the write end */
	close(p[0]), close(a), close(c), close(lfd);
	out_line("result: feature=inet sent=%zd received=%zu fds=%zu dropped=%d", r, rx.len, rx.nfds,
		 eof);
	return r == 1 && st == FDPASS_OK && rx.len == 1 && rx.nfds == 0 && eof;
}

/* ---- main --------------------------------------------------------------- */

static const struct {
	const char *name;
	int (*run)(const struct nar *n);
} sections[] = {
	{ "pidfd_getfd", sec_pidfd_getfd }, { "peerpidfd", sec_peerpidfd },
	{ "scm_pidfd", sec_scm_pidfd },     { "passrights", sec_passrights },
	{ "toomanyrefs", sec_toomanyrefs }, { "inet", sec_inet },
};

int main(int argc, char **argv)
{
	size_t ns = sizeof sections / sizeof sections[0];
	if (argc == 2 && strcmp(argv[1], "--help") == 0) {
		fputs(usage, stdout);
		return 0;
	}
	for (int i = 1; i < argc; i++) {
		size_t k = 0;
		while (k < ns && strcmp(argv[i], sections[k].name) != 0)
			k++;
		if (k == ns)
			usage_error("no section '%s'", argv[i]);
	}
	signal(SIGPIPE, SIG_IGN);
	struct nar n = { .role = "newer", .trace_fd = -1, .seq_fd = -1 };
	int ok = 1;
	for (size_t k = 0; k < ns; k++) {
		int wanted = argc == 1;
		for (int i = 1; i < argc; i++)
			wanted |= strcmp(argv[i], sections[k].name) == 0;
		if (wanted)
			ok &= sections[k].run(&n) != 0;
	}
	return ok ? EXIT_LESSON : EXIT_RUNTIME;
}
