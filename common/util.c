/*
 * util.c - loopback sockets, bounded waits, reaping, descriptor tables.
 */
#define _GNU_SOURCE
#include "util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static struct sockaddr_in loopback(int port)
{
	return (struct sockaddr_in){
		.sin_family = AF_INET,
		.sin_port = htons((unsigned short)port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
}

int listen_loopback(int port, int *bound)
{
	return listen_loopback_opts(port, bound, 0);
}

int listen_loopback_opts(int port, int *bound, int opts)
{
	int type = SOCK_STREAM | SOCK_CLOEXEC | ((opts & LOOPBACK_NONBLOCK) ? SOCK_NONBLOCK : 0);
	int fd = socket(AF_INET, type, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	struct sockaddr_in sa = loopback(port);
	socklen_t salen = sizeof sa;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    ((opts & LOOPBACK_REUSEPORT) &&
	     setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
	    bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
	    (!(opts & LOOPBACK_NO_LISTEN) && listen(fd, SOMAXCONN) < 0) ||
	    getsockname(fd, (struct sockaddr *)&sa, &salen) < 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	if (bound)
		*bound = ntohs(sa.sin_port);
	return fd;
}

int connect_loopback(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in sa = loopback(port);
	int r;
	do
		r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

int spare_fd(void)
{
	return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

int accept_shedding(int lfd, int *spare)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd >= 0 || (errno != EMFILE && errno != ENFILE) || *spare < 0)
		return fd;
	int saved = errno;
	close(*spare);
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd >= 0)
		close(fd);
	*spare = spare_fd();
	errno = saved;
	return -1;
}

int wait_readable(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int r;
	do
		r = poll(&p, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -1 : r;
}

ssize_t read_within(int fd, void *buf, size_t len, int timeout_ms)
{
	int r = wait_readable(fd, timeout_ms);
	if (r <= 0) {
		if (r == 0)
			errno = ETIMEDOUT;
		return -1;
	}
	ssize_t n;
	do
		n = read(fd, buf, len);
	while (n < 0 && errno == EINTR);
	return n;
}

int wait_eof(int fd, int timeout_ms)
{
	char buf[64];
	for (;;) {
		ssize_t r = read_within(fd, buf, sizeof buf, timeout_ms);
		if (r <= 0)
			return r == 0;
	}
}

ssize_t read_line(int fd, char *buf, size_t cap, int timeout_ms)
{
	size_t len = 0;
	while (len + 1 < cap) {
		ssize_t n = read_within(fd, buf + len, 1, timeout_ms);
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		if (buf[len++] == '\n')
			break;
	}
	buf[len] = '\0';
	return (ssize_t)len;
}

int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

int wait_child(pid_t pid, int timeout_ms, int *status)
{
	/* A pidfd becomes readable when the child exits: poll it with a bound. */
	int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pfd < 0)
		return -1;
	int r = wait_readable(pfd, timeout_ms);
	close(pfd);
	if (r <= 0) {
		if (r == 0)
			errno = ETIMEDOUT;
		return -1;
	}
	int st = 0;
	pid_t w;
	do
		w = waitpid(pid, &st, 0);
	while (w < 0 && errno == EINTR);
	if (w < 0)
		return -1;
	if (status)
		*status = st;
	return 0;
}

int reap_child(pid_t pid, int timeout_ms, int *status)
{
	if (wait_child(pid, timeout_ms, status) == 0)
		return 0;
	int saved = errno;
	kill(pid, SIGKILL);
	while (waitpid(pid, status, 0) < 0 && errno == EINTR)
		;
	errno = saved;
	return -1;
}

int fd_target(pid_t pid, int fd, char *buf, size_t cap)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
	ssize_t n = readlink(path, buf, cap - 1);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return 0;
}

int fd_list(int *fds, int cap)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int self = dirfd(d), n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		int fd = atoi(e->d_name);
		if (fd == self)
			continue; /* the directory stream itself is not ours to report */
		if (n < cap) {
			int i = n;
			while (i > 0 && fds[i - 1] > fd) {
				fds[i] = fds[i - 1];
				i--;
			}
			fds[i] = fd;
		}
		n++;
	}
	closedir(d);
	return n;
}

int same_file(pid_t pid1, int fd1, pid_t pid2, int fd2)
{
	long r = syscall(SYS_kcmp, pid1, pid2, KCMP_FILE, (unsigned long)fd1, (unsigned long)fd2);
	return r < 0 ? -1 : (int)r;
}

int signal_fd(int with_sigchld)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	if (with_sigchld)
		sigaddset(&set, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

void unblock_signals(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigprocmask(SIG_SETMASK, &set, NULL);
}

const char *errno_text(int err, char *buf, size_t cap)
{
	/* strerrorname_np knows every errno glibc knows; NULL for the rest. */
	const char *name = strerrorname_np(err);
	char num[16];
	if (!name) {
		snprintf(num, sizeof num, "errno %d", err);
		name = num;
	}
	snprintf(buf, cap, "%s (%s)", name, strerror(err));
	return buf;
}
