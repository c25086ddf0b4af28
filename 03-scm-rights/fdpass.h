/*
 * fdpass.h - pass file descriptors over a Unix domain socket (SCM_RIGHTS),
 * done right on every path. Stage 03 introduces it; stages 04-06 include it.
 *
 * What "right" means here, each point a bug that shipped somewhere:
 *   send  1..FDPASS_MAX_FDS descriptors with a non-empty payload on a stream
 *         socket (an empty one is silently dropped by the kernel: sendmsg
 *         returns 0 and no descriptor ever arrives); MSG_NOSIGNAL, so a dead
 *         peer is an EPIPE and not a SIGPIPE; EINTR retried; a short send told.
 *   recv  a control buffer aligned for struct cmsghdr; MSG_CMSG_CLOEXEC, so
 *         nothing leaks into a program exec'd later; descriptors counted from
 *         cmsg_len (CMSG_SPACE(sizeof(int)) has room for *two* on 64-bit
 *         ABIs, where the padding to 8 bytes leaves 4 spare) and copied
 *         with memcpy; every control message walked; a rejected message has
 *         every one of its descriptors closed before we return.
 *
 * Nothing here prints or exits. Every function returns an fdpass_status; on
 * anything but FDPASS_OK, errno is set too (see the list below), so callers
 * may treat it as -1/errno if they prefer. Two statuses are about the
 * caller, not the peer: FDPASS_EINVAL (a NULL buffer, a zero capacity, more
 * than FDPASS_MAX_FDS asked for - a bug to fix, refused before any system
 * call) and FDPASS_EAGAIN (the socket is non-blocking and nothing could
 * move now: poll and call again; nothing was sent, nothing was received,
 * no descriptor changed hands). Every other failed system call is
 * FDPASS_ESYS with its errno (EPIPE: the peer is gone).
 *
 * See also: unix(7) (SCM_RIGHTS, SCM_MAX_FD), cmsg(3), sendmsg(2), recvmsg(2).
 */
#ifndef FDPASS_H
#define FDPASS_H

#include <stddef.h>
#include <sys/types.h>

/* SCM_MAX_FD in the kernel (include/net/scm.h): 253 send, 254 is EINVAL. */
#define FDPASS_MAX_FDS 253

enum fdpass_status {
	FDPASS_OK = 0,
	FDPASS_EOF,     /* recv: the peer closed its end; no message      (errno 0)        */
	FDPASS_ESYS,    /* a system call failed                            (its errno)      */
	FDPASS_EAGAIN,  /* non-blocking socket, nothing could move now     (EAGAIN)         */
	FDPASS_EINVAL,  /* caller misuse: NULL buf/fds, cap 0, max_fds>253 (EINVAL)         */
	FDPASS_ECOUNT,  /* send: 0, or more than FDPASS_MAX_FDS, fds       (EINVAL)         */
	FDPASS_EEMPTY,  /* send: empty payload on a SOCK_STREAM socket     (EINVAL)         */
	FDPASS_ESHORT,  /* send: the kernel took part of the payload only  (EMSGSIZE)       */
	FDPASS_ECTRUNC, /* recv: MSG_CTRUNC, the control buffer was short  (EMSGSIZE)       */
	FDPASS_ECMSG,   /* recv: a control message other than SCM_RIGHTS   (EPROTO)         */
	FDPASS_ETOOMANY,/* recv: more fds arrived than the caller allowed  (E2BIG)          */
	FDPASS_ENOFD,   /* recv: no fd, and FDPASS_NEED_FD was asked       (ENOMSG)         */
};

/* A short name for a status ("message truncated: MSG_CTRUNC", ...). */
const char *fdpass_strerror(int status);

/*
 * Sends buf[0..len) with fds[0..nfds) attached, in one sendmsg(2).
 * Refuses, before asking the kernel, NULL fds (or NULL buf with len > 0:
 * FDPASS_EINVAL), nfds outside 1..FDPASS_MAX_FDS (FDPASS_ECOUNT), and an
 * empty payload on a SOCK_STREAM socket (FDPASS_EEMPTY; only when len == 0
 * does it ask the socket's type). A full non-blocking socket: FDPASS_EAGAIN,
 * nothing sent. *sent (if not NULL) gets the number
 * of payload bytes the kernel took, also on FDPASS_ESHORT: the descriptors
 * went with the first byte, the rest of the payload is the caller's to send.
 * The caller still owns fds[]: closing them right after is safe, the message
 * in flight holds its own reference to each open file.
 */
int fdpass_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds, size_t *sent);

/*
 * The bare sendmsg(2) with an SCM_RIGHTS control message and no checks:
 * returns what sendmsg returned (-1/errno). For demonstrating mistakes
 * (stage 03's --zero-byte); real code calls fdpass_send().
 */
ssize_t fdpass_sendmsg_raw(int sock, const void *buf, size_t len, const int *fds, size_t nfds);

enum {
	FDPASS_NEED_FD = 1,    /* a message without a descriptor is an error */
	FDPASS_NO_CLOEXEC = 2, /* leave out MSG_CMSG_CLOEXEC (stage 03's --no-cloexec) */
};

struct fdpass_rx {
	/* in */
	void *buf;       /* payload goes here; cap >= 1 */
	size_t cap;
	int *fds;        /* received descriptors go here */
	size_t max_fds;  /* room in fds[], 0..FDPASS_MAX_FDS; also sizes the control buffer */
	unsigned flags;  /* FDPASS_NEED_FD, FDPASS_NO_CLOEXEC */
	/* out */
	size_t len;      /* payload bytes received (also when rejected) */
	size_t nfds;     /* descriptors now in fds[], owned by the caller (0 unless FDPASS_OK) */
	size_t closed;   /* descriptors that arrived in a rejected message and were closed here */
	int msg_flags;   /* msg_flags as recvmsg(2) returned them (MSG_CTRUNC, MSG_TRUNC) */
};

/*
 * Receives one message. FDPASS_OK: rx->len bytes and rx->nfds descriptors
 * (0 is fine unless FDPASS_NEED_FD), which the caller now owns and must
 * close. FDPASS_EINVAL: rx is unusable (buf NULL, cap 0, max_fds > 253,
 * fds NULL with max_fds > 0), nothing was read. FDPASS_EAGAIN: a
 * non-blocking socket with nothing queued. FDPASS_EOF: the peer closed and nothing
 * came - not the same as a message that carried no descriptor. Any rejection
 * (ECTRUNC, ECMSG, ETOOMANY, ENOFD) has already closed every descriptor the
 * message carried. On SOCK_SEQPACKET a zero-byte message *with* descriptors
 * is a message; a zero-byte message without any cannot be told from EOF.
 */
int fdpass_recv(int sock, struct fdpass_rx *rx);

/* SO_PEERCRED: who is at the other end (as of connect/socketpair). -1/errno. */
int fdpass_peer(int sock, pid_t *pid, uid_t *uid, gid_t *gid);

#endif
