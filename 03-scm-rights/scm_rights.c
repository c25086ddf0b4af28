/*
 * scm_rights.c - stage 03: passing a descriptor to a process that already
 * exists, with sendmsg/recvmsg and SCM_RIGHTS (fdpass.c does the passing).
 *
 * A worker is forked first - it has no descriptor for any connection yet
 * (stage 01 showed why that is a problem). The parent then accepts a client
 * and passes the connection over the channel (stage 02). The worker gets a
 * *different number* for the *same kernel file*: we prove it with
 * kcmp(KCMP_FILE), with st_dev/st_ino, and with the socket inode in
 * /proc/PID/fd. Then the worker serves the client and the parent keeps
 * nothing. This file is the lesson, top to bottom; the other files of the
 * folder are the machinery around it (scm_rights.h lists them).
 *
 * Run it:    ./scm_rights                       narrated demo (a socket)
 *            ./scm_rights --kind file|pipe      pass a regular file / a pipe
 *            ./scm_rights --serve [--port N]    echo server, worker pre-forked
 *            ./scm_rights send|recv --unix PATH ...   interop, see README
 * Break it:  --zero-byte, --small-control, --no-cloexec, --classic-receiver
 *            (demo_breakit.c; the README says what each one shows)
 *
 * Article: Q1 (why a descriptor can be passed) and Q2 steps 2-3 (sendmsg and
 * recvmsg with SCM_RIGHTS; the dup/close question is stage 04's).
 * See also: unix(7), cmsg(3), sendmsg(2), recvmsg(2), kcmp(2), fcntl(2),
 * proc(5); in the kernel: net/core/scm.c (scm_fp_copy, scm_detach_fds),
 * net/socket.c (sock_alloc_file: file->private_data = sock).
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
#include <sys/wait.h>
#include <unistd.h>

/* ---- the worker: it exists before the descriptor it will serve ---------- */

/*
 * Receives one descriptor on the channel ch and serves it. The received
 * descriptor is the worker's own: it reports the number to the parent,
 * uses it, and closes it. Returns the worker's exit status.
 */
static int worker(struct nar *n, const struct demo_opts *o, int ch, int go)
{
	char g;
	/* Held until the parent has sent: then nothing arriving means nothing was sent. */
	if (read_within(go, &g, 1, WAIT_MS) != 1)
		return 1;
	if (wait_readable(ch, ABSENT_MS) == 0) {
		say(n, "nothing arrived within %d ms: the descriptor was never sent", ABSENT_MS);
		ev(n, "recvmsg", NULL, "result=nothing waited_ms=%d", ABSENT_MS);
		chan_say(ch, "fd=%d", -1);
		return 0;
	}
	/* lesson: receive_connection */
	char payload[16];
	int fds[1];
	struct fdpass_rx rx = {
		.buf = payload, .cap = sizeof payload, .fds = fds, .max_fds = 1,
		.flags = FDPASS_NEED_FD | (o->no_cloexec ? FDPASS_NO_CLOEXEC : 0),
	};
	/* recvmsg(2) installs the descriptor in MY table, at the lowest free
	 * number, with FD_CLOEXEC set (MSG_CMSG_CLOEXEC) */
	int st = fdpass_recv(ch, &rx);
	if (st != FDPASS_OK) {
		/* rejected: fdpass_recv has already closed all the message carried */
		breakit_rejected(n, st, rx.len, rx.closed, rx.msg_flags);
		chan_say(ch, "fd=%d", -1);
		return 0;
	}
	int fd = fds[0];
	struct file_id id = file_id(fd);
	/* end lesson */
	say(n, "recvmsg -> %zu byte(s) of payload and fd %d: a new number in MY table, %s", rx.len, fd,
	    "pointing at the parent's open file");
	ev(n, "recvmsg", NULL, "fd=%d bytes=%zu dev=%lu inode=%lu cloexec=%d", fd, rx.len, id.dev,
	   id.ino, (fcntl(fd, F_GETFD) & FD_CLOEXEC) ? 1 : 0);
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

/* ---- the parent: pass the descriptor, then prove what was passed -------- */

/*
 * Sends fd to the worker over ch with a 1-byte payload. The parent still
 * owns fd afterwards; the message in flight holds its own reference to the
 * open file, so the parent may close fd at once.
 */
static void pass(struct nar *n, int ch, int fd)
{
	/* lesson: pass_connection */
	/* one byte of payload: on a stream socket an empty one carries nothing */
	int st = fdpass_send(ch, "c", 1, &fd, 1, NULL);
	if (st != FDPASS_OK)
		die("fdpass_send: %s", fdpass_strerror(st));
	/* end lesson */
	say(n, "sendmsg(fd %d) with SCM_RIGHTS and a 1-byte payload: the message now holds "
	       "its own reference to the open file", fd);
	ev(n, "sendmsg", "worker", "fd=%d bytes=1", fd);
}

/* Q1 in a few lines, and the proof, while both descriptors are open. Returns
 * 1 if kcmp says the parent's fd and the worker's wfd are one open file. */
static int prove_same_file(struct nar *n, int fd, pid_t wpid, int wfd)
{
	char mine[128] = "?", theirs[128] = "?";
	fd_target(getpid(), fd, mine, sizeof mine);
	fd_target(wpid, wfd, theirs, sizeof theirs);
	/* lesson: same_open_file */
	/* kcmp(2) compares the struct file behind two descriptors of two
	 * processes: 0 means the very same open file description */
	int same = same_file(getpid(), fd, wpid, wfd);
	/* end lesson */
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

/* ---- the demo, in order ------------------------------------------------- */

int demo(struct nar *n, const struct demo_opts *o)
{
	if (o->classic)
		return classic_demo(n);
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
	struct subject s;
	make_subject(n, o, ch, go[1], &s);
	int fd = s.fd;

	/* 3. Pass it. */
	int extra[2][2] = { { -1, -1 }, { -1, -1 } };
	if (o->zero_byte || o->small_control)
		breakit_send(n, o, ch, fd, extra);
	else
		pass(n, ch, fd);
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
	if (wfd >= 0 && o->kind == KIND_FILE)
		show_shared_state(n, ch, fd, &offset, &nonblock);
	if (wfd >= 0)
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
	if (wfd >= 0 && o->kind != KIND_FILE)
		ev(n, "go", "worker", NULL);
	if (wfd >= 0)
		chan_say(ch, "go=%d", 1);

	/* 6. Effects, seen from here. */
	if (o->kind == KIND_PIPE && wfd >= 0)
		show_pipe_effect(n, s.keep);
	if (s.keep >= 0)
		close(s.keep);
	int lost_closed = o->small_control ? breakit_lost_closed(n, extra) : 1;
	if (s.client > 0) {
		(void)!write(s.client_go, "g", 1);
		close(s.client_go);
	}

	int ok = 1, st;
	/* the client exits 0 only if its connection reached end-of-file: served
	 * and closed, or (a break-it switch) closed unserved - never left open */
	if (s.client > 0 && (reap_child(s.client, 2 * WAIT_MS + ABSENT_MS, &st) < 0 ||
			     !WIFEXITED(st) || WEXITSTATUS(st) != 0))
		ok = 0;
	if (reap_child(wpid, 2 * WAIT_MS, &st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		ok = 0;
	close(ch);
	if (s.lfd >= 0)
		close(s.lfd);
	out_line("result: kind=%s channel=%s delivered=%d worker_fd=%d same_file=%d offset=%d "
		 "nonblock_shared=%d parent_cloexec=%d all_closed=%d",
		 kind_names[o->kind], channel_names[o->channel], wfd >= 0, wfd, same, offset, nonblock,
		 cloexec, lost_closed);
	return ok ? EXIT_LESSON : EXIT_RUNTIME;
}
