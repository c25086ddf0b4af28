/*
 * fdpass.c - EXERCISE (stage 03): SCM_RIGHTS send and receive; the why of
 * each step is in fdpass.h.
 *
 * This is 03-scm-rights/fdpass.c with its two lesson cores taken out: write
 * them where the TODOs are (exercises/03-fdpass/README.md has the task and
 * the hints), then `make exercise-03` builds stage 03 with this file and
 * runs its tests. Everything outside the TODOs is the stage's own code.
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
	/* TODO(fdpass_send_cmsg): send buf[0..len) on sock in ONE sendmsg(2),
	 * with fds[0..nfds) attached as one SOL_SOCKET/SCM_RIGHTS control
	 * message when nfds > 0, and set n to what sendmsg returned (-1/errno).
	 * - the control buffer is control.buf (the union above: aligned for
	 *   struct cmsghdr), no larger than the nfds descriptors need;
	 * - a dead peer must be an EPIPE for the caller, never a SIGPIPE;
	 * - a signal that interrupts the call is not a failure.
	 * Until you write it, it sends nothing and says so. */
	(void)sock;
	(void)buf;
	(void)len;
	(void)fds;
	errno = ENOSYS;
	ssize_t n = -1;
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

	/* TODO(fdpass_recv_count): receive one message on sock: its payload
	 * into rx->buf (at most rx->cap bytes), its descriptors with
	 * close-on-exec set unless rx->flags has FDPASS_NO_CLOEXEC. Then:
	 * - set rx->len and rx->msg_flags; a failed recvmsg is sys_status();
	 * - take EVERY descriptor out of EVERY SCM_RIGHTS control message into
	 *   got[0..ngot), counted from cmsg_len;
	 * - reject the message, in this order, when its control data was
	 *   truncated (FDPASS_ECTRUNC, EMSGSIZE), when it held a control message
	 *   that is not SOL_SOCKET/SCM_RIGHTS (FDPASS_ECMSG, EPROTO; an
	 *   SCM_PIDFD one carries a descriptor too), when more
	 *   than rx->max_fds descriptors came (FDPASS_ETOOMANY, E2BIG), or when
	 *   none came and FDPASS_NEED_FD was asked (FDPASS_ENOFD, ENOMSG);
	 *   a rejected message has every descriptor it carried closed
	 *   (close_all) and counted in rx->closed;
	 * - 0 bytes and no descriptor is the end of the stream: FDPASS_EOF.
	 * An accepted message falls through to the lines below, which hand
	 * got[0..ngot) to the caller. Until you write it, it receives nothing. */
	int got[FDPASS_MAX_FDS]; /* make room for all your control buffer can hold */
	size_t ngot = 0;
	(void)sock;
	(void)close_all;
	return status(FDPASS_ESYS, ENOSYS);
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
