/*
 * scm_rights.c - stage 03: passing a descriptor to a process that already
 * exists, with sendmsg/recvmsg and SCM_RIGHTS (fdpass.c does the passing).
 *
 * A worker is forked first - it has no descriptor for any connection yet
 * (stage 01 showed why that is a problem). The parent then accepts a client
 * and passes the connection over the channel (stage 02). The worker gets a
 * *different number* for the *same kernel file*: we prove it with
 * kcmp(KCMP_FILE) and with the socket inode in /proc/PID/fd. Then the worker
 * serves the client and the parent keeps nothing.
 *
 * Run it:    ./scm_rights                       narrated demo (a socket)
 *            ./scm_rights --kind file|pipe      pass a regular file / a pipe
 *            ./scm_rights --serve [--port N]    echo server, worker pre-forked
 *            ./scm_rights send --unix PATH FILE...       interop commands,
 *            ./scm_rights recv --unix PATH [--count N] [--max-fds M]  see README
 * Break it:  --zero-byte       empty payload: on a stream channel the fd never
 *                              arrives (try --channel seqpacket: it does)
 *            --small-control   the worker's control buffer is too small:
 *                              MSG_CTRUNC, and every descriptor is lost
 *            --no-cloexec      received without MSG_CMSG_CLOEXEC: the socket
 *                              leaks into a program the worker execs
 *
 * Article: Q1 (why a descriptor can be passed) and Q2 steps 2-3 (sendmsg and
 * recvmsg with SCM_RIGHTS; the dup/close question is stage 04's).
 * See also: unix(7), cmsg(3), sendmsg(2), recvmsg(2), kcmp(2), fcntl(2),
 * proc(5); in the kernel: net/core/scm.c (scm_fp_copy, scm_detach_fds),
 * net/socket.c (sock_alloc_file: file->private_data = sock).
 */
#define _GNU_SOURCE
#include "../common/cli.h"
#include "../common/narrate.h"
#include "../common/util.h"
#include "fdpass.h"

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
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static const char usage[] =
	"usage: scm_rights [--kind socket|file|pipe] [--channel stream|seqpacket]\n"
	"                  [--zero-byte | --small-control | --no-cloexec] [--trace FILE] [--mermaid]\n"
	"       scm_rights --serve [--port N]\n"
	"       scm_rights send --unix PATH FILE...\n"
	"       scm_rights recv --unix PATH [--count N] [--max-fds M]\n"
	"Stage 03: pass a descriptor to a running worker with SCM_RIGHTS.\n"
	"  --kind K         what to pass: socket (a client connection, default), file, pipe\n"
	"  --channel T      the parent<->worker channel: stream (default) or seqpacket\n"
	"  --zero-byte      break it: send the descriptor with an empty payload\n"
	"  --small-control  break it: send 3 descriptors to a worker with room for 1\n"
	"  --no-cloexec     break it: receive without MSG_CMSG_CLOEXEC, then exec\n"
	"                   (one break-it switch at a time, with --kind socket)\n" COMMON_USAGE
	"send: connect to the Unix socket PATH, open each FILE read-only, send them all in\n"
	"      one message with a one-byte payload.\n"
	"recv: listen on PATH; for every descriptor received print\n"
	"      'received fd=N kind=K dev=D ino=I' (and 'content: LINE' for a regular file),\n"
	"      then close it; at most M (default 16) per message; exit after N descriptors\n"
	"      or on SIGTERM/SIGINT.\n";

enum kind { KIND_SOCKET, KIND_FILE, KIND_PIPE };
static const char *const kind_names[] = { "socket", "file", "pipe", NULL };
static const char *const channel_names[] = { "stream", "seqpacket", NULL };

struct demo_opts {
	enum kind kind;
	int channel; /* 0 stream, 1 seqpacket */
	int zero_byte, small_control, no_cloexec;
};

/* ---- small helpers ---------------------------------------------------- */

static unsigned long inode_of(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

/* A short line on the channel. On a stream channel the worker and parent
 * take turns (one message each way at a time), so a read returns one line. */
static void chan_say(int ch, const char *fmt, int value)
{
	char msg[32];
	int len = snprintf(msg, sizeof msg, fmt, value);
	if (send(ch, msg, (size_t)len, MSG_NOSIGNAL) != len)
		die("send on the channel");
}

static int chan_hear(int ch, const char *fmt, int *value)
{
	char msg[32];
	ssize_t r = read_within(ch, msg, sizeof msg - 1, WAIT_MS);
	if (r <= 0)
		return -1;
	msg[r] = '\0';
	return sscanf(msg, fmt, value) == 1 ? 0 : -1;
}

/* Reads until end-of-file (bounded): 1 if it came, 0 if not. */
static int wait_eof_fd(int fd)
{
	char buf[64];
	for (;;) {
		ssize_t r = read_within(fd, buf, sizeof buf, WAIT_MS);
		if (r <= 0)
			return r == 0;
	}
}

/* The program the worker execs to show what it inherited (see --no-cloexec). */
static int list_fds(void)
{
	struct nar n = { .role = "exec", .trace_fd = -1, .seq_fd = -1 };
	int fds[256], k = fd_list(fds, 256);
	char target[128];
	for (int i = 0; i < k && i < 256; i++)
		if (fds[i] > 2 && fd_target(getpid(), fds[i], target, sizeof target) == 0)
			say(&n, "after exec I hold fd %d -> %s", fds[i], target);
	say(&n, "that is every descriptor above 2 that survived exec");
	return 0;
}

/* ---- the demo: the worker -------------------------------------------- */

/* What the worker does with the descriptor it received. */
static void worker_use(const struct nar *n, const struct demo_opts *o, int fd)
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

/* Runs `scm_rights --list-fds` in a child of the worker and waits for it. */
static void worker_exec(const struct nar *n, int fd)
{
	int flags = fcntl(fd, F_GETFD);
	say(n, "fd %d has FD_CLOEXEC %s; now I exec a program - will it get the socket?", fd,
	    (flags & FD_CLOEXEC) ? "set" : "CLEAR");
	ev(n, "exec", NULL, "fd=%d cloexec=%d", fd, (flags & FD_CLOEXEC) ? 1 : 0);
	pid_t pid = fork();
	if (pid == 0) {
		execl("/proc/self/exe", "scm_rights", "--list-fds", (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || reap_child(pid, WAIT_MS, NULL) < 0)
		say(n, "the exec'd program failed or hung");
}

static int worker(struct nar *n, const struct demo_opts *o, int ch, int go)
{
	char g;
	/* Held until the parent has sent: then nothing arriving means nothing was sent. */
	if (read_within(go, &g, 1, WAIT_MS) != 1)
		return 1;
	char payload[16];
	int fds[1];
	struct fdpass_rx rx = {
		.buf = payload, .cap = sizeof payload, .fds = fds, .max_fds = 1,
		.flags = FDPASS_NEED_FD | (o->no_cloexec ? FDPASS_NO_CLOEXEC : 0),
	};
	int st;
	if (wait_readable(ch, ABSENT_MS) == 0) {
		say(n, "nothing arrived within %d ms: the descriptor was never sent", ABSENT_MS);
		ev(n, "recvmsg", NULL, "result=nothing waited_ms=%d", ABSENT_MS);
		chan_say(ch, "fd=%d", -1);
		return 0;
	}
	st = fdpass_recv(ch, &rx);
	if (st != FDPASS_OK) {
		say(n, "recvmsg: %s (%zu byte(s) of payload)", fdpass_strerror(st), rx.len);
		if (st == FDPASS_ECTRUNC)
			say(n, "my control buffer had room for 1 int - CMSG_SPACE pads it to 2, so the "
			       "kernel installed %zu and dropped the rest itself; fdpass_recv closed the "
			       "%zu installed, so nothing leaks", rx.closed, rx.closed);
		else
			say(n, "fdpass_recv rejected the message and closed the %zu descriptor(s) it "
			       "carried", rx.closed);
		ev(n, "recvmsg", NULL, "result=%s ctrunc=%d closed=%zu", st == FDPASS_ECTRUNC ? "ctrunc" : "rejected",
		   (rx.msg_flags & MSG_CTRUNC) ? 1 : 0, rx.closed);
		chan_say(ch, "fd=%d", -1);
		return 0;
	}
	int fd = fds[0];
	say(n, "recvmsg -> %zu byte(s) of payload and fd %d: a new number in MY table, %s", rx.len, fd,
	    "pointing at the parent's open file");
	ev(n, "recvmsg", NULL, "fd=%d bytes=%zu inode=%lu cloexec=%d", fd, rx.len, inode_of(fd),
	   (fcntl(fd, F_GETFD) & FD_CLOEXEC) ? 1 : 0);
	if (o->kind == KIND_SOCKET)
		worker_exec(n, fd); /* before the parent's turn: the diagram stays in order */
	ev(n, "report", "parent", "fd=%d", fd);
	chan_say(ch, "fd=%d", fd); /* so the parent can compare (kcmp needs both numbers) */
	int dummy;
	if (chan_hear(ch, "go=%d", &dummy) < 0) /* the parent has looked; now use it */
		return 1;
	worker_use(n, o, fd);
	if (o->kind == KIND_FILE) {
		ev(n, "report", "parent", "fd=%d", fd);
		chan_say(ch, "used=%d", 1);
		if (chan_hear(ch, "go=%d", &dummy) < 0) /* the parent has looked again */
			return 1;
	}
	say(n, "close(fd %d): done with it", fd);
	ev(n, "close", NULL, "fd=%d", fd);
	close(fd);
	return 0;
}

/* ---- the demo: the client -------------------------------------------- */

static int client(const struct nar *n, int port, int go)
{
	ev(n, "connect", "parent", "port=%d", port);
	int fd = connect_loopback(port);
	if (fd < 0)
		die("client: connect");
	char g, reply[600];
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
		say(n, "no reply: read: %s", strerror(errno));
		ev(n, "reply", NULL, "served=0");
	}
	shutdown(fd, SHUT_WR);
	r = read_within(fd, reply, sizeof reply, WAIT_MS);
	close(fd);
	/* 0: the connection reached end-of-file - served and closed, or closed unserved */
	return r == 0 ? 0 : 3;
}

/* ---- the demo: the parent -------------------------------------------- */

/* The descriptor to pass, by kind. *keep is a descriptor the parent keeps
 * to look at the effects (the pipe's read end); -1 if none. */
static int make_subject(struct nar *n, const struct demo_opts *o, int lfd, int *keep)
{
	*keep = -1;
	if (o->kind == KIND_SOCKET) {
		/* accept() without SOCK_CLOEXEC: FD_CLOEXEC stays clear in the parent,
		 * so we can show it is per descriptor and does not travel */
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			die("accept");
		say(n, "accept() -> fd %d, socket:[%lu]", fd, inode_of(fd));
		ev(n, "accept", NULL, "fd=%d inode=%lu", fd, inode_of(fd));
		return fd;
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
		say(n, "a regular file, fd %d, offset 0, flags O_RDWR", fd);
		ev(n, "open", NULL, "fd=%d kind=file", fd);
		return fd;
	}
	int p[2];
	if (pipe(p) < 0)
		die("pipe");
	say(n, "pipe() -> read end fd %d, write end fd %d; I pass the write end", p[0], p[1]);
	ev(n, "pipe", NULL, "rfd=%d wfd=%d", p[0], p[1]);
	*keep = p[0];
	return p[1];
}

/* Q1 in a few lines, and the proof, while both descriptors are open. */
static int prove_same_file(struct nar *n, int fd, pid_t wpid, int wfd)
{
	char mine[128] = "?", theirs[128] = "?";
	fd_target(getpid(), fd, mine, sizeof mine);
	fd_target(wpid, wfd, theirs, sizeof theirs);
	int same = same_file(getpid(), fd, wpid, wfd);
	say(n, "my fd %d and the worker's fd %d: different numbers, in two descriptor tables", fd, wfd);
	say(n, "kcmp(me, worker, KCMP_FILE, %d, %d) = %d: %s", fd, wfd, same,
	    same == 0 ? "the same struct file in the kernel" : "NOT the same file");
	say(n, "/proc/%d/fd/%d = %s, /proc/%d/fd/%d = %s", (int)getpid(), fd, mine, (int)wpid, wfd,
	    theirs);
	say(n, "why this works: a descriptor is an index into a per-process table of struct file "
	       "pointers; for a socket, file->private_data is the struct socket (sock_map_fd ties "
	       "them together). SCM_RIGHTS installs a new index in the receiver to the same struct "
	       "file, as dup() would within one process.");
	ev(n, "kcmp", NULL, "fd=%d worker_fd=%d same=%d", fd, wfd, same == 0);
	return same == 0;
}

static int demo(struct nar *n, const struct demo_opts *o)
{
	int sv[2], go[2];
	int type = o->channel ? SOCK_SEQPACKET : SOCK_STREAM;
	if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0 || pipe2(go, O_CLOEXEC) < 0)
		die("socketpair/pipe2");
	say(n, "the channel: socketpair(AF_UNIX, SOCK_%s) -> fd %d (mine), fd %d (the worker's)",
	    o->channel ? "SEQPACKET" : "STREAM", sv[0], sv[1]);

	/* 1. The worker first: it exists before the descriptor it will serve. */
	ev(n, "fork", "worker", "channel=%s", channel_names[o->channel]);
	pid_t wpid = fork();
	if (wpid < 0)
		die("fork");
	if (wpid == 0) {
		n->role = "worker";
		close(sv[0]);
		close(go[1]);
		int rc = worker(n, o, sv[1], go[0]);
		close(sv[1]);
		_exit(rc);
	}
	close(sv[1]);
	close(go[0]);
	int ch = sv[0];

	/* 2. Then the subject: a connection (with its own client), a file, a pipe. */
	int lfd = -1, port = 0, cgo[2] = { -1, -1 };
	pid_t cpid = -1;
	if (o->kind == KIND_SOCKET) {
		lfd = listen_loopback(0, &port);
		if (lfd < 0 || pipe2(cgo, O_CLOEXEC) < 0)
			die("listen on 127.0.0.1");
		cpid = fork();
		if (cpid < 0)
			die("fork");
		if (cpid == 0) {
			n->role = "client";
			close(cgo[1]);
			close(ch);
			close(go[1]);
			close(lfd);
			_exit(client(n, port, cgo[0]));
		}
		close(cgo[0]);
	}
	int keep, fd = make_subject(n, o, lfd, &keep);

	/* 3. Pass it. */
	int extra[2][2] = { { -1, -1 }, { -1, -1 } };
	if (o->zero_byte) {
		ssize_t r = fdpass_sendmsg_raw(ch, "", 0, &fd, 1);
		say(n, "--zero-byte: sendmsg(fd %d, payload of 0 bytes) = %zd%s", fd, r,
		    o->channel ? ": on a seqpacket socket an empty message is still a message - "
				 "the descriptor travels with it"
			       : ": on a stream socket 0 bytes means nothing was sent - "
				 "the descriptor goes nowhere");
		ev(n, "sendmsg", "worker", "fd=%d bytes=0 result=%zd", fd, r);
	} else if (o->small_control) {
		if (pipe2(extra[0], O_CLOEXEC) < 0 || pipe2(extra[1], O_CLOEXEC) < 0)
			die("pipe2");
		int three[3] = { fd, extra[0][1], extra[1][1] };
		size_t sent;
		int st = fdpass_send(ch, "c", 1, three, 3, &sent);
		if (st != FDPASS_OK)
			die("fdpass_send: %s", fdpass_strerror(st));
		say(n, "--small-control: sent fds %d, %d, %d (the connection and two pipe write ends) "
		       "to a worker with room for one", fd, extra[0][1], extra[1][1]);
		ev(n, "sendmsg", "worker", "fds=3 bytes=1");
		close(extra[0][1]);
		close(extra[1][1]);
	} else {
		size_t sent;
		int st = fdpass_send(ch, "c", 1, &fd, 1, &sent);
		if (st != FDPASS_OK)
			die("fdpass_send: %s", fdpass_strerror(st));
		say(n, "sendmsg(fd %d) with SCM_RIGHTS and a 1-byte payload: the message now holds "
		       "its own reference to the open file", fd);
		ev(n, "sendmsg", "worker", "fd=%d bytes=1", fd);
	}
	(void)!write(go[1], "g", 1); /* worker: the message is on its way, look now */
	close(go[1]);

	/* 4. The worker tells us its number; compare while both are open. */
	int wfd = -1, same = 0;
	if (chan_hear(ch, "fd=%d", &wfd) < 0)
		die("no answer from the worker");
	if (wfd >= 0) {
		same = prove_same_file(n, fd, wpid, wfd);
		int pflags = fcntl(fd, F_GETFD);
		say(n, "FD_CLOEXEC on my fd %d: %s - a descriptor flag, one per table entry, it did not "
		       "travel", fd, (pflags & FD_CLOEXEC) ? "set" : "clear");
	} else {
		say(n, "the worker got no descriptor");
	}

	/* 5. Done with our copy (except a file: we look at shared state first). */
	int offset = -1, nonblock = -1, cloexec = -1;
	if (wfd >= 0 && o->kind == KIND_FILE) {
		ev(n, "go", "worker", NULL);
		chan_say(ch, "go=%d", 1);
		int used;
		if (chan_hear(ch, "used=%d", &used) < 0)
			die("no answer from the worker");
		offset = (int)lseek(fd, 0, SEEK_CUR);
		nonblock = (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
		cloexec = (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
		say(n, "after the worker's read: MY offset is %d - one offset, in the shared open file",
		    offset);
		say(n, "O_NONBLOCK, set by the worker, is %s here: file status flags are shared too",
		    nonblock ? "set" : "clear");
		say(n, "FD_CLOEXEC here is %s, while the worker's is set: descriptor flags are not shared",
		    cloexec ? "set" : "clear");
		ev(n, "shared", NULL, "offset=%d nonblock=%d cloexec=%d", offset, nonblock, cloexec);
	}
	if (wfd >= 0 && o->kind != KIND_FILE)
		cloexec = (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
	close(fd);
	if (wfd >= 0)
		say(n, "close(fd %d): my copy; the worker's descriptor keeps the file open", fd);
	else
		say(n, "close(fd %d): %s", fd,
		    o->zero_byte ? "nothing was sent, so this was the last descriptor: the connection "
				   "closes unserved"
				 : "the worker rejected the message and closed its copy, so this was "
				   "the last descriptor: the connection closes unserved");
	ev(n, "close", NULL, "fd=%d", fd);
	if (wfd >= 0 && o->kind != KIND_FILE) {
		ev(n, "go", "worker", NULL);
		chan_say(ch, "go=%d", 1);
	} else if (wfd >= 0) {
		chan_say(ch, "go=%d", 1);
	}

	/* 6. Effects, seen from here. */
	char piped[128] = "";
	if (o->kind == KIND_PIPE && wfd >= 0) {
		ssize_t r = read_line(keep, piped, sizeof piped, WAIT_MS);
		piped[strcspn(piped, "\n")] = '\0';
		int eof = wait_eof_fd(keep);
		say(n, "read from my read end fd %d: \"%s\" (%zd bytes), then end-of-file%s", keep,
		    piped, r, eof ? ": the worker closed the last write end" : " did NOT come");
		ev(n, "read", NULL, "fd=%d bytes=%zd eof=%d", keep, r, eof);
	}
	if (keep >= 0)
		close(keep);
	int lost_closed = 1;
	if (o->small_control) {
		for (int i = 0; i < 2; i++) {
			int eof = wait_eof_fd(extra[i][0]);
			lost_closed &= eof;
			close(extra[i][0]);
		}
		say(n, "both pipe read ends see end-of-file: every descriptor of the rejected message "
		       "is closed (by the kernel, or by fdpass_recv)%s", lost_closed ? "" : " - NOT!");
		ev(n, "lost_closed", NULL, "all=%d", lost_closed);
	}
	if (cpid > 0) {
		(void)!write(cgo[1], "g", 1);
		close(cgo[1]);
	}

	int ok = 1, st;
	/* the client exits 0 only if its connection reached end-of-file: served
	 * and closed, or (a break-it switch) closed unserved - never left open */
	if (cpid > 0 && (reap_child(cpid, 2 * WAIT_MS + ABSENT_MS, &st) < 0 || !WIFEXITED(st) ||
			 WEXITSTATUS(st) != 0))
		ok = 0;
	if (reap_child(wpid, 2 * WAIT_MS, &st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		ok = 0;
	close(ch);
	if (lfd >= 0)
		close(lfd);
	out_line("result: kind=%s channel=%s delivered=%d worker_fd=%d same_file=%d offset=%d "
		 "nonblock_shared=%d parent_cloexec=%d all_closed=%d",
		 kind_names[o->kind], channel_names[o->channel], wfd >= 0, wfd, same, offset, nonblock,
		 cloexec, lost_closed);
	return ok ? EXIT_LESSON : EXIT_RUNTIME;
}

/* ---- --serve: a pre-forked worker serves every connection ------------- */

/* The worker's loop: the channel brings connections, each is echoed. */
static void serve_worker(const struct nar *n, int ch)
{
	struct pollfd p[65] = { { .fd = ch, .events = POLLIN } };
	nfds_t np = 1;
	for (;;) {
		if (poll(p, np, -1) < 0) { /* the parent closing the channel always wakes us */
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[0].revents) {
			char c;
			int fd;
			struct fdpass_rx rx = { .buf = &c, .cap = 1, .fds = &fd, .max_fds = 1,
						.flags = FDPASS_NEED_FD };
			int st = fdpass_recv(ch, &rx);
			if (st == FDPASS_EOF || st == FDPASS_ESYS)
				break; /* the parent is shutting down */
			if (st == FDPASS_OK && np < 65) {
				p[np++] = (struct pollfd){ .fd = fd, .events = POLLIN };
				say(n, "received a connection as fd %d", fd);
			} else if (st == FDPASS_OK) {
				close(fd); /* full: refusing is better than growing without bound */
			}
		}
		for (nfds_t i = 1; i < np; i++) {
			if (!p[i].revents)
				continue;
			char buf[512], reply[600];
			ssize_t r = read(p[i].fd, buf, sizeof buf);
			size_t len = 0;
			if (r > 0) { /* the tag, then the bytes as they came */
				len = (size_t)snprintf(reply, sizeof reply, "[%s %d] ", n->role,
						       (int)getpid());
				memcpy(reply + len, buf, (size_t)r);
				len += (size_t)r;
			}
			if (r <= 0 || write_all(p[i].fd, reply, len) < 0) {
				close(p[i].fd);
				p[i--] = p[--np];
			}
		}
	}
	for (nfds_t i = 1; i < np; i++)
		close(p[i].fd);
}

static int serve(struct nar *n, int port)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	int lfd = listen_loopback(port, &port);
	if (lfd < 0)
		die("socket/bind/listen on 127.0.0.1:%d", port);
	int sfd = signal_fd(0);
	if (sfd < 0)
		die("signalfd");
	pid_t wpid = fork();
	if (wpid < 0)
		die("fork");
	if (wpid == 0) {
		n->role = "worker";
		close(sv[0]);
		close(lfd);
		close(sfd);
		serve_worker(n, sv[1]);
		_exit(0);
	}
	close(sv[1]);
	int spare = spare_fd();
	announce_listening(port);
	for (;;) {
		struct pollfd p[2] = { { .fd = lfd, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0 && errno != EINTR) /* a signal always ends the wait */
			die("poll");
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		int conn = accept_shedding(lfd, &spare);
		if (conn < 0)
			continue;
		int st = fdpass_send(sv[0], "c", 1, &conn, 1, NULL);
		if (st != FDPASS_OK)
			say(n, "could not pass fd %d: %s (%s)", conn, fdpass_strerror(st), strerror(errno));
		else
			say(n, "accept() -> fd %d, passed to worker %d, and closed here", conn, (int)wpid);
		close(conn);
	}
	if (spare >= 0)
		close(spare);
	close(sv[0]); /* the worker sees EOF and finishes */
	if (reap_child(wpid, WAIT_MS, NULL) < 0)
		say(n, "worker %d did not finish in time: killed", (int)wpid);
	close(sfd);
	close(lfd);
	return EXIT_LESSON;
}

/* ---- interop: send and recv ------------------------------------------ */

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

/* One line per received descriptor, then close it. */
static void describe_and_close(int fd)
{
	struct stat st;
	const char *kind = "other";
	if (fstat(fd, &st) < 0) {
		fprintf(stderr, "error: fstat(fd %d): %s\n", fd, strerror(errno));
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

/* Serves one connection; returns how many descriptors it received. */
static long recv_conn(int conn, int sfd, long max_fds, long want, int *stop)
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
		struct fdpass_rx rx = { .buf = buf, .cap = sizeof buf, .fds = fds,
					.max_fds = (size_t)max_fds };
		int st = fdpass_recv(conn, &rx);
		if (st == FDPASS_EOF)
			break;
		if (st == FDPASS_ESYS) {
			fprintf(stderr, "error: recvmsg: %s\n", strerror(errno));
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

static int cmd_recv(const char *path, long count, long max_fds)
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
			if (errno == EMFILE || errno == ENFILE)
				fprintf(stderr, "error: accept: %s: connection closed unserved\n",
					strerror(errno));
			continue;
		}
		total += recv_conn(conn, sfd, max_fds, count ? count - total : 0, &stop);
		close(conn);
	}
	unlink(path);
	if (spare >= 0)
		close(spare);
	close(sfd);
	close(lfd);
	return 0;
}

static int interop(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "unix", required_argument, NULL, 'u' },
		{ "count", required_argument, NULL, 'c' },
		{ "max-fds", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *path = NULL;
	long count = 0, max_fds = 16;
	int is_send = strcmp(argv[0], "send") == 0, c;
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
		else if (c == 'h') {
			fputs(usage, stdout);
			return 0;
		} else if (c == '?') {
			exit(EXIT_USAGE); /* getopt has printed the line naming the option */
		} else
			usage_error("%s takes --unix PATH%s", argv[0],
				    is_send ? " FILE..." : " [--count N] [--max-fds M]");
	}
	if (!path)
		usage_error("%s needs --unix PATH", argv[0]);
	signal(SIGPIPE, SIG_IGN);
	if (is_send)
		return cmd_send(path, argv + optind, argc - optind);
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	return cmd_recv(path, count, max_fds);
}

int main(int argc, char **argv)
{
	if (argc > 1 && (strcmp(argv[1], "send") == 0 || strcmp(argv[1], "recv") == 0))
		return interop(argc - 1, argv + 1);
	if (argc == 2 && strcmp(argv[1], "--list-fds") == 0)
		return list_fds();

	static const struct option longopts[] = {
		COMMON_LONGOPTS,
		{ "kind", required_argument, NULL, OPT_STAGE },
		{ "channel", required_argument, NULL, OPT_STAGE + 1 },
		{ "zero-byte", no_argument, NULL, OPT_STAGE + 2 },
		{ "small-control", no_argument, NULL, OPT_STAGE + 3 },
		{ "no-cloexec", no_argument, NULL, OPT_STAGE + 4 },
		{ 0 },
	};
	struct common_opts co = { 0 };
	struct demo_opts o = { 0 };
	int c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (common_opt(&co, c, optarg, usage))
			continue;
		switch (c) {
		case OPT_STAGE: o.kind = (enum kind)parse_choice("--kind", optarg, kind_names); break;
		case OPT_STAGE + 1: o.channel = parse_choice("--channel", optarg, channel_names); break;
		case OPT_STAGE + 2: o.zero_byte = 1; break;
		case OPT_STAGE + 3: o.small_control = 1; break;
		case OPT_STAGE + 4: o.no_cloexec = 1; break;
		}
	}
	common_done(&co, argc, argv, usage);
	if (o.zero_byte + o.small_control + o.no_cloexec > 1)
		usage_error("one break-it switch at a time");
	if ((o.zero_byte || o.small_control || o.no_cloexec) && o.kind != KIND_SOCKET)
		usage_error("the break-it switches show what happens to a client connection: "
			    "use them with --kind socket");
	if (co.serve && (o.zero_byte || o.small_control || o.no_cloexec || o.kind || o.channel))
		usage_error("--serve takes only --port");
	signal(SIGPIPE, SIG_IGN);

	struct nar n;
	if (nar_open(&n, "parent", co.trace, co.mermaid) < 0)
		die("open trace file");
	int rc = co.serve ? serve(&n, co.port) : demo(&n, &o);
	if (co.mermaid)
		nar_mermaid(&n, stdout);
	nar_close(&n);
	return rc;
}
