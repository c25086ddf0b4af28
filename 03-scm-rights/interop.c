/*
 * interop.c - stage 03's two commands for other programs and the tests:
 *
 *   scm_rights send --unix PATH FILE...   open each FILE read-only and send
 *                                         them all in one message
 *   scm_rights recv --unix PATH [--count N] [--max-fds M] [--classic-receiver]
 *                                         print and close every descriptor
 *                                         received
 *
 * Any SCM_RIGHTS peer works with them (Python's socket.send_fds/recv_fds;
 * tests/test_03_interop.py has the hostile senders). With
 * --classic-receiver, recv receives as the classic books do (room for one
 * int, a length check, nothing closed), so a test can watch the leak from
 * outside.
 *
 * See also: unix(7) (pathname sockets, SCM_RIGHTS), fstat(2), pread(2).
 */
#define _GNU_SOURCE
#include "scm_rights.h"
#include "../common/cli.h"
#include "../common/util.h"
#include "fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- send --------------------------------------------------------------- */

static int unix_socket(const char *path, struct sockaddr_un *sa)
{
	*sa = (struct sockaddr_un){ .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof sa->sun_path)
		usage_error("--unix path longer than %zu bytes", sizeof sa->sun_path - 1);
	strcpy(sa->sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket(AF_UNIX)");
	return fd;
}

static int cmd_send(const char *path, char **files, int nfiles)
{
	if (nfiles < 1)
		usage_error("send needs at least one FILE");
	if (nfiles > FDPASS_MAX_FDS)
		usage_error("at most %d files in one message (SCM_MAX_FD), not %d", FDPASS_MAX_FDS, nfiles);
	struct sockaddr_un sa;
	int sock = unix_socket(path, &sa);
	if (connect(sock, (struct sockaddr *)&sa, sizeof sa) < 0)
		die("connect(%s)", path);
	int fds[FDPASS_MAX_FDS];
	for (int i = 0; i < nfiles; i++)
		if ((fds[i] = open(files[i], O_RDONLY | O_CLOEXEC)) < 0)
			die("open(%s)", files[i]);
	int st = fdpass_send(sock, "f", 1, fds, (size_t)nfiles, NULL);
	if (st != FDPASS_OK)
		die("sendmsg: %s", fdpass_strerror(st));
	for (int i = 0; i < nfiles; i++)
		close(fds[i]);
	close(sock);
	return 0;
}

/* ---- recv --------------------------------------------------------------- */

/* One line per received descriptor, then close it. */
static void describe_and_close(int fd)
{
	struct stat st;
	const char *kind = "other";
	if (fstat(fd, &st) < 0) {
		char err[ERRNO_TEXT_LEN];
		fprintf(stderr, "error: fstat(fd %d): %s\n", fd, errno_text(errno, err, sizeof err));
		close(fd);
		return;
	}
	if (S_ISSOCK(st.st_mode))
		kind = "socket";
	else if (S_ISREG(st.st_mode))
		kind = "file";
	else if (S_ISFIFO(st.st_mode))
		kind = "pipe";
	else if (S_ISDIR(st.st_mode))
		kind = "dir";
	out_line("received fd=%d kind=%s dev=%lu ino=%lu", fd, kind, (unsigned long)st.st_dev,
		 (unsigned long)st.st_ino);
	if (S_ISREG(st.st_mode)) {
		char buf[1024];
		/* pread: the offset belongs to the sender too (it is shared). */
		ssize_t r = pread(fd, buf, sizeof buf - 1, 0);
		buf[r > 0 ? r : 0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		out_line("content: %s", buf);
	}
	close(fd);
}

/* --classic-receiver: one message the classic way. 1 = go on, 0 = the
 * connection is done. What the classic receiver rejects stays open. */
static int classic_one(int conn, char *buf, size_t cap, long *got)
{
	int fd, in_cmsg;
	char err[ERRNO_TEXT_LEN];
	ssize_t n = classic_recv_fd(conn, buf, cap, &fd, &in_cmsg);
	if (n <= 0) {
		if (n < 0)
			fprintf(stderr, "error: recvmsg: %s\n", errno_text(errno, err, sizeof err));
		return 0;
	}
	if (fd < 0) {
		fprintf(stderr, "error: %s (classic receiver; the message carried %d)\n",
			fdpass_strerror(FDPASS_ENOFD), in_cmsg);
		return 1;
	}
	describe_and_close(fd);
	++*got;
	return 1;
}

/* Serves one connection; returns how many descriptors it received. */
static long recv_conn(int conn, int sfd, long max_fds, long want, int *stop, int classic)
{
	char buf[64 * 1024]; /* payload beyond this arrives in the next reads */
	int fds[FDPASS_MAX_FDS];
	long got = 0;
	int in_message = 0; /* a message with descriptors has begun on this connection */
	while (!*stop && (want == 0 || got < want)) {
		struct pollfd p[2] = { { .fd = conn, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		int r = poll(p, 2, 3 * WAIT_MS);
		if (r == 0) {
			fprintf(stderr, "error: connection idle for %d s, dropped\n", 3 * WAIT_MS / 1000);
			break;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 || p[1].revents) {
			*stop = 1;
			break;
		}
		if (classic) {
			if (!classic_one(conn, buf, sizeof buf, &got))
				break;
			continue;
		}
		struct fdpass_rx rx = { .buf = buf, .cap = sizeof buf, .fds = fds,
					.max_fds = (size_t)max_fds };
		int st = fdpass_recv(conn, &rx);
		if (st == FDPASS_EOF)
			break;
		if (st == FDPASS_ESYS) {
			char err[ERRNO_TEXT_LEN];
			fprintf(stderr, "error: recvmsg: %s\n", errno_text(errno, err, sizeof err));
			break;
		}
		if (st != FDPASS_OK) {
			fprintf(stderr, "error: %s (%zu descriptor(s) closed, %zu payload bytes)\n",
				fdpass_strerror(st), rx.closed, rx.len);
			in_message = 1;
			continue;
		}
		if (rx.nfds == 0) {
			/* On a stream socket the rest of a long payload comes without
			 * descriptors; only bytes that start a connection must carry one. */
			if (!in_message)
				fprintf(stderr, "error: %s (%zu bytes)\n", fdpass_strerror(FDPASS_ENOFD),
					rx.len);
			in_message = 1; /* one error per message, not one per read */
			continue;
		}
		in_message = 1;
		for (size_t i = 0; i < rx.nfds; i++)
			describe_and_close(fds[i]);
		got += (long)rx.nfds;
	}
	return got;
}

static int cmd_recv(const char *path, long count, long max_fds, int classic)
{
	struct sockaddr_un sa;
	int lfd = unix_socket(path, &sa);
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			errno = EEXIST;
			die("%s exists and is not a socket; not replacing it", path);
		}
		unlink(path); /* a stale socket file from an earlier run */
	}
	if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 16) < 0)
		die("bind/listen(%s)", path);
	int sfd = signal_fd(0);
	if (sfd < 0)
		die("signalfd");
	int spare = spare_fd(); /* before we say we listen: a peer may come at once */
	fprintf(stderr, "scm_rights: listening on %s\n", path);
	long total = 0;
	int stop = 0;
	while (!stop && (count == 0 || total < count)) {
		struct pollfd p[2] = { { .fd = lfd, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0) { /* waits for a peer or a signal: both end it */
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			break;
		int conn = accept_shedding(lfd, &spare);
		if (conn < 0) {
			char err[ERRNO_TEXT_LEN];
			if (errno == EMFILE || errno == ENFILE)
				fprintf(stderr, "error: accept: %s: connection closed unserved\n",
					errno_text(errno, err, sizeof err));
			continue;
		}
		total += recv_conn(conn, sfd, max_fds, count ? count - total : 0, &stop, classic);
		close(conn);
	}
	unlink(path);
	if (spare >= 0)
		close(spare);
	close(sfd);
	close(lfd);
	return 0;
}

/* ---- the command line of send and recv ---------------------------------- */

int interop(int argc, char **argv, const char *usage)
{
	static const struct option longopts[] = {
		{ "unix", required_argument, NULL, 'u' },
		{ "count", required_argument, NULL, 'c' },
		{ "max-fds", required_argument, NULL, 'm' },
		{ "classic-receiver", no_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *path = NULL;
	long count = 0, max_fds = 16;
	int is_send = strcmp(argv[0], "send") == 0, c, classic = 0;
	/* getopt names argv[0] in its messages: make it the whole command */
	static char send_name[] = "scm_rights send", recv_name[] = "scm_rights recv";
	argv[0] = is_send ? send_name : recv_name;
	optind = 1;
	while ((c = getopt_long(argc, argv, is_send ? "+" : "", longopts, NULL)) != -1) {
		if (c == 'u')
			path = optarg;
		else if (c == 'c' && !is_send)
			count = parse_long("--count", optarg, 1, 1L << 30);
		else if (c == 'm' && !is_send)
			max_fds = parse_long("--max-fds", optarg, 1, FDPASS_MAX_FDS);
		else if (c == 'k' && !is_send)
			classic = 1;
		else if (c == 'h') {
			fputs(usage, stdout);
			return 0;
		} else if (c == '?') {
			exit(EXIT_USAGE); /* getopt has printed the line naming the option */
		} else
			usage_error("%s takes --unix PATH%s", argv[0],
				    is_send ? " FILE..."
					    : " [--count N] [--max-fds M] [--classic-receiver]");
	}
	if (!path)
		usage_error("%s needs --unix PATH", argv[0]);
	signal(SIGPIPE, SIG_IGN);
	if (is_send)
		return cmd_send(path, argv + optind, argc - optind);
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	return cmd_recv(path, count, max_fds, classic);
}

