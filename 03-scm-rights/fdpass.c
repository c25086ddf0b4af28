/*
 * fdpass.c - SCM_RIGHTS send and receive; the why of each step is in fdpass.h.
 *
 * Compare with the cmsg(3) example: same union for alignment, same memcpy in
 * and out of CMSG_DATA; what it leaves out - counting from cmsg_len, closing
 * what we did not ask for, MSG_CTRUNC, EOF versus "no fd" - is done here.
 */
#define _GNU_SOURCE
#include "fdpass.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* Linux 6.5: a receiver that set SO_PASSPIDFD gets, with every message, a
 * pidfd of the sender (older headers do not name it). */
#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04
#endif

/* Room for the largest control message we ever send or accept. */
union fdpass_control {
	struct cmsghdr align; /* forces the alignment CMSG_* macros assume */
	char buf[CMSG_SPACE(FDPASS_MAX_FDS * sizeof(int))];
};

static int status(int st, int err)
{
	errno = err;
	return st;
}

/* A failed system call: EAGAIN gets its own status, so that a non-blocking
 * caller need not look behind FDPASS_ESYS; errno is left as it was. */
static int sys_status(void)
{
	return (errno == EAGAIN || errno == EWOULDBLOCK) ? FDPASS_EAGAIN : FDPASS_ESYS;
}

const char *fdpass_strerror(int st)
{
	switch (st) {
	case FDPASS_OK: return "ok";
	case FDPASS_EOF: return "end of stream: the peer closed the channel";
	case FDPASS_ESYS: return "system call failed";
	case FDPASS_EAGAIN: return "would block: the socket is non-blocking and not ready";
	case FDPASS_EINVAL: return "invalid arguments from the caller";
	case FDPASS_ECOUNT: return "descriptor count must be 1..253 (SCM_MAX_FD)";
	case FDPASS_EEMPTY: return "empty payload on a stream socket: the kernel would drop the descriptors";
	case FDPASS_ESHORT: return "short send: only part of the payload was sent";
	case FDPASS_ECTRUNC: return "control data truncated (MSG_CTRUNC): descriptors were lost";
	case FDPASS_ECMSG: return "unexpected control message (not SOL_SOCKET/SCM_RIGHTS)";
	case FDPASS_ETOOMANY: return "more descriptors than allowed";
	case FDPASS_ENOFD: return "no descriptor in message";
	}
	return "unknown status";
}

ssize_t fdpass_sendmsg_raw(int sock, const void *buf, size_t len, const int *fds, size_t nfds)
{
	union fdpass_control control;
	if (nfds * sizeof(int) > sizeof control.buf - CMSG_LEN(0)) {
		errno = EINVAL;
		return -1;
	}
	/* lesson: fdpass_send_cmsg */
	/* The payload: on a stream socket at least one byte, or nothing is sent. */
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		/* One SCM_RIGHTS control message: a header, then nfds ints, in a
		 * buffer aligned for struct cmsghdr (the union above). */
		size_t bytes = nfds * sizeof(int);
		memset(control.buf, 0, CMSG_SPACE(bytes)); /* the padding too */
		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(bytes);
		struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(bytes);
		memcpy(CMSG_DATA(cmsg), fds, bytes); /* CMSG_DATA need not be aligned for int */
	}
	ssize_t n;
	do
		/* MSG_NOSIGNAL: a worker that died is an EPIPE to handle, not a SIGPIPE. */
		n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	/* end lesson */
	return n;
}

int fdpass_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds, size_t *sent)
{
	if (sent)
		*sent = 0;
	if (!fds || (len > 0 && !buf))
		return status(FDPASS_EINVAL, EINVAL);
	if (nfds < 1 || nfds > FDPASS_MAX_FDS)
		return status(FDPASS_ECOUNT, EINVAL);
	if (len == 0) {
		/* Only an empty payload needs the socket type (one system call
		 * more): on a stream socket a 0-byte sendmsg returns 0 and the
		 * fds never arrive; on seqpacket and datagram it is a message. */
		int type = 0;
		socklen_t tlen = sizeof type;
		if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0)
			return FDPASS_ESYS;
		if (type == SOCK_STREAM)
			return status(FDPASS_EEMPTY, EINVAL);
	}
	ssize_t n = fdpass_sendmsg_raw(sock, buf, len, fds, nfds);
	if (n < 0)
		return sys_status();
	if (sent)
		*sent = (size_t)n;
	if ((size_t)n < len)
		return status(FDPASS_ESHORT, EMSGSIZE);
	return FDPASS_OK;
}

static void close_all(const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
}

int fdpass_recv(int sock, struct fdpass_rx *rx)
{
	rx->len = rx->nfds = rx->closed = 0;
	rx->msg_flags = 0;
	if (!rx->buf || rx->cap == 0 || rx->max_fds > FDPASS_MAX_FDS || (rx->max_fds && !rx->fds))
		return status(FDPASS_EINVAL, EINVAL);

	/* lesson: fdpass_recv_count */
	union fdpass_control control; /* aligned for struct cmsghdr */
	struct iovec iov = { .iov_base = rx->buf, .iov_len = rx->cap };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		/* Sized for what the caller allows: a peer that sends more makes
		 * the kernel truncate (MSG_CTRUNC) instead of installing them all.
		 * The padding of CMSG_SPACE may still let a few extra through,
		 * which is why the count below comes from cmsg_len. */
		.msg_controllen = CMSG_SPACE((rx->max_fds ? rx->max_fds : 1) * sizeof(int)),
	};
	int flags = (rx->flags & FDPASS_NO_CLOEXEC) ? 0 : MSG_CMSG_CLOEXEC;
	ssize_t n;
	do
		n = recvmsg(sock, &msg, flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return sys_status();
	rx->len = (size_t)n;
	rx->msg_flags = msg.msg_flags;

	/* Take every descriptor out of every SCM_RIGHTS message first, so that
	 * whatever we decide next, we know exactly what we must close. */
	int got[sizeof control.buf / sizeof(int)];
	size_t ngot = 0;
	int foreign = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_len < CMSG_LEN(0) ||
		    (c->cmsg_type != SCM_RIGHTS && c->cmsg_type != SCM_PIDFD)) {
			foreign = 1;
			continue;
		}
		/* SCM_PIDFD is foreign here too, but it is a descriptor: close it */
		foreign |= c->cmsg_type == SCM_PIDFD;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		if (k > sizeof got / sizeof got[0] - ngot) /* cannot happen: controllen bounds it */
			k = sizeof got / sizeof got[0] - ngot;
		memcpy(got + ngot, CMSG_DATA(c), k * sizeof(int));
		ngot += k;
	}

	int st = FDPASS_OK, err = 0;
	if (msg.msg_flags & MSG_CTRUNC)
		st = FDPASS_ECTRUNC, err = EMSGSIZE;
	else if (foreign)
		st = FDPASS_ECMSG, err = EPROTO;
	else if (ngot > rx->max_fds)
		st = FDPASS_ETOOMANY, err = E2BIG;
	else if (n == 0 && ngot == 0)
		return status(FDPASS_EOF, 0);
	else if (ngot == 0 && (rx->flags & FDPASS_NEED_FD))
		st = FDPASS_ENOFD, err = ENOMSG;

	if (st != FDPASS_OK) {
		/* A rejected message is not the caller's: close all it carried. */
		close_all(got, ngot);
		rx->closed = ngot;
		return status(st, err);
	}
	/* end lesson */
	if (ngot)
		memcpy(rx->fds, got, ngot * sizeof(int));
	rx->nfds = ngot;
	return FDPASS_OK;
}

int fdpass_peer(int sock, pid_t *pid, uid_t *uid, gid_t *gid)
{
	struct ucred cred;
	socklen_t len = sizeof cred;
	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -1;
	if (pid)
		*pid = cred.pid;
	if (uid)
		*uid = cred.uid;
	if (gid)
		*gid = cred.gid;
	return 0;
}
