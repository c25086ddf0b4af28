/*
 * demo_subjects.c - stage 03's demo machinery: what the parent passes (a
 * client connection with its own client process, a regular file, a pipe's
 * write end), what the worker does with it, and what the parent then sees
 * through its own copy (a shared offset, shared status flags, a line in a
 * pipe). The lesson itself is in scm_rights.c.
 *
 * Run it:  ./scm_rights [--kind socket|file|pipe]
 * See also: fstat(2) (st_dev, st_ino), lseek(2), fcntl(2) (F_GETFL vs
 * F_GETFD), pipe(7), open(2) ("open file description").
 */
#define _GNU_SOURCE
#include "scm_rights.h"
#include "../common/cli.h"
#include "../common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const kind_names[] = { "socket", "file", "pipe", NULL };
const char *const channel_names[] = { "stream", "seqpacket", NULL };

/* ---- small helpers ------------------------------------------------------ */

struct file_id file_id(int fd)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return (struct file_id){ 0, 0 };
	return (struct file_id){ (unsigned long)st.st_dev, (unsigned long)st.st_ino };
}

/* On a stream channel the worker and parent take turns (one message each
 * way at a time), so a read returns one line. */
void chan_say(int ch, const char *fmt, int value)
{
	char msg[32];
	int len = snprintf(msg, sizeof msg, fmt, value);
	if (send(ch, msg, (size_t)len, MSG_NOSIGNAL) != len)
		die("send on the channel");
}

int chan_hear(int ch, const char *fmt, int *value)
{
	char msg[32];
	ssize_t r = read_within(ch, msg, sizeof msg - 1, WAIT_MS);
	if (r <= 0)
		return -1;
	msg[r] = '\0';
	return sscanf(msg, fmt, value) == 1 ? 0 : -1;
}

/* ---- the client of --kind socket ---------------------------------------- */

/* Connects, waits for the parent's word, sends a line and reports what came
 * back. Exits 0 only if the connection reached end-of-file. */
static int client(const struct nar *n, int port, int go)
{
	ev(n, "connect", "parent", "port=%d", port);
	int fd = connect_loopback(port);
	if (fd < 0)
		die("client: connect");
	char g, reply[600], err[ERRNO_TEXT_LEN];
	if (read_within(go, &g, 1, WAIT_MS) != 1) /* the parent is done with the handoff */
		die("client: no word from the parent");
	const char line[] = "hello over a passed descriptor\n";
	ev(n, "send", "worker", "bytes=%zu", strlen(line));
	if (write_all(fd, line, strlen(line)) < 0)
		die("client: write");
	ssize_t r = read_line(fd, reply, sizeof reply, WAIT_MS);
	if (r > 0) {
		reply[strcspn(reply, "\n")] = '\0';
		say(n, "got back \"%s\"", reply);
		ev(n, "reply", NULL, "served=1");
	} else if (r == 0) {
		say(n, "no reply, end-of-file: the connection was closed without anyone serving it");
		ev(n, "reply", NULL, "served=0");
	} else if (errno == ETIMEDOUT) {
		say(n, "no reply and no end-of-file within %d s: someone holds the connection and "
		       "does not serve it", WAIT_MS / 1000);
		ev(n, "reply", NULL, "served=0");
	} else {
		say(n, "no reply: read: %s", errno_text(errno, err, sizeof err));
		ev(n, "reply", NULL, "served=0");
	}
	shutdown(fd, SHUT_WR);
	r = read_within(fd, reply, sizeof reply, WAIT_MS);
	close(fd);
	/* 0: the connection reached end-of-file - served and closed, or closed unserved */
	return r == 0 ? 0 : 3;
}

/* ---- the subjects ------------------------------------------------------- */

/* A listener, a client process that connects to it, and the accepted
 * connection: s->fd. The client closes ch and other, the parent's. */
static void socket_subject(struct nar *n, int ch, int other, struct subject *s)
{
	int port = 0, cgo[2];
	s->lfd = listen_loopback(0, &port);
	if (s->lfd < 0 || pipe2(cgo, O_CLOEXEC) < 0)
		die("listen on 127.0.0.1");
	s->client = fork();
	if (s->client < 0)
		die("fork");
	if (s->client == 0) {
		n->role = "client";
		close(cgo[1]);
		close(ch);
		if (other >= 0)
			close(other);
		close(s->lfd);
		_exit(client(n, port, cgo[0]));
	}
	close(cgo[0]);
	s->client_go = cgo[1];
	/* accept() without SOCK_CLOEXEC: FD_CLOEXEC stays clear in the parent,
	 * so we can show it is per descriptor and does not travel */
	s->fd = accept(s->lfd, NULL, NULL);
	if (s->fd < 0)
		die("accept");
	struct file_id id = file_id(s->fd);
	say(n, "accept() -> fd %d, socket:[%lu]", s->fd, id.ino);
	ev(n, "accept", NULL, "fd=%d dev=%lu inode=%lu", s->fd, id.dev, id.ino);
}

void make_subject(struct nar *n, const struct demo_opts *o, int ch, int other, struct subject *s)
{
	*s = (struct subject){ .fd = -1, .keep = -1, .lfd = -1, .client = -1, .client_go = -1 };
	if (o->kind == KIND_SOCKET) {
		socket_subject(n, ch, other, s);
		return;
	}
	if (o->kind == KIND_FILE) {
		char path[] = "/tmp/scm_rights.XXXXXX";
		int fd = mkstemp(path);
		if (fd < 0)
			die("mkstemp");
		unlink(path); /* the name is gone; the open file lives while a descriptor does */
		const char text[] = "first line\nsecond line\n";
		if (write_all(fd, text, strlen(text)) < 0 || lseek(fd, 0, SEEK_SET) < 0)
			die("write the temp file");
		struct file_id id = file_id(fd);
		say(n, "a regular file, fd %d, offset 0, flags O_RDWR", fd);
		ev(n, "open", NULL, "fd=%d kind=file dev=%lu inode=%lu", fd, id.dev, id.ino);
		s->fd = fd;
		return;
	}
	int p[2];
	if (pipe(p) < 0)
		die("pipe");
	struct file_id id = file_id(p[1]);
	say(n, "pipe() -> read end fd %d, write end fd %d; I pass the write end", p[0], p[1]);
	ev(n, "pipe", NULL, "rfd=%d wfd=%d dev=%lu inode=%lu", p[0], p[1], id.dev, id.ino);
	s->keep = p[0];
	s->fd = p[1];
}

/* ---- what the worker does with it, and what the parent sees ------------- */

void worker_use(const struct nar *n, const struct demo_opts *o, int fd)
{
	char buf[512];
	if (o->kind == KIND_FILE) {
		ssize_t r = read(fd, buf, 11);
		say(n, "read(fd %d, 11) -> %zd bytes: this moves the file offset - which one?", fd, r);
		ev(n, "read", NULL, "fd=%d bytes=%zd", fd, r);
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		say(n, "fcntl(fd %d, F_SETFL, O_NONBLOCK): a file status flag", fd);
		ev(n, "set_nonblock", NULL, "fd=%d", fd);
		return;
	}
	if (o->kind == KIND_PIPE) {
		const char msg[] = "written by the worker into a pipe it was passed\n";
		ev(n, "write", "parent", "fd=%d bytes=%zu", fd, strlen(msg));
		if (write_all(fd, msg, strlen(msg)) < 0)
			die("write to the passed pipe");
		say(n, "wrote %zu bytes into fd %d, the pipe's write end", strlen(msg), fd);
		return;
	}
	/* A client connection: echo each line, tagged, until the client's EOF. */
	ssize_t len;
	while ((len = read_line(fd, buf, sizeof buf - 1, WAIT_MS)) > 0) {
		char reply[600];
		buf[strcspn(buf, "\n")] = '\0';
		int r = snprintf(reply, sizeof reply, "[%s %d] %s\n", n->role, (int)getpid(), buf);
		ev(n, "echo", "client", "fd=%d bytes=%zd", fd, len);
		if (write_all(fd, reply, (size_t)r) < 0)
			break;
	}
}

void show_shared_state(struct nar *n, int ch, int fd, int *offset, int *nonblock)
{
	ev(n, "go", "worker", NULL);
	chan_say(ch, "go=%d", 1);
	int used;
	if (chan_hear(ch, "used=%d", &used) < 0)
		die("no answer from the worker");
	*offset = (int)lseek(fd, 0, SEEK_CUR);
	*nonblock = (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
	int cloexec = (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
	say(n, "after the worker's read: MY offset is %d - one offset, in the shared open file",
	    *offset);
	say(n, "O_NONBLOCK, set by the worker, is %s here: file status flags are shared too",
	    *nonblock ? "set" : "clear");
	say(n, "FD_CLOEXEC here is %s, while the worker's is set: descriptor flags are not shared",
	    cloexec ? "set" : "clear");
	ev(n, "shared", NULL, "offset=%d nonblock=%d cloexec=%d", *offset, *nonblock, cloexec);
}

void show_pipe_effect(struct nar *n, int keep)
{
	char piped[128] = "";
	ssize_t r = read_line(keep, piped, sizeof piped, WAIT_MS);
	piped[strcspn(piped, "\n")] = '\0';
	int eof = wait_eof(keep, WAIT_MS);
	say(n, "read from my read end fd %d: \"%s\" (%zd bytes), then end-of-file%s", keep, piped, r,
	    eof ? ": the worker closed the last write end" : " did NOT come");
	ev(n, "read", NULL, "fd=%d bytes=%zd eof=%d", keep, r, eof);
}
