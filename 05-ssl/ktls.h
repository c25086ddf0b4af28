/*
 * ktls.h - hand a TLS 1.3 session's record state to the kernel (kTLS).
 *
 * The kernel's TLS "upper layer protocol" holds exactly what record.h holds
 * per direction - key, iv (split into a 4-byte salt and an 8-byte iv for
 * AES-GCM), and the record sequence number - and then encrypts on write(2)
 * and decrypts on read(2). After that the descriptor can be passed to any
 * process like a plain socket: the session lives in the kernel, not in the
 * process. What it leaves to user space: every record that is not
 * application data (alerts, KeyUpdate, tickets) arrives as a control message
 * (ktls_recv), and a KeyUpdate stops the kernel's reception until user
 * space installs the next key - which Linux before 6.14 cannot take at all.
 *
 * Run it: `make test-ktls` boots a kernel that has kTLS under qemu and runs
 * tests/test_ktls.py there (05-ssl/README.md, "Kernel TLS").
 * See also: Documentation/networking/tls.rst in the kernel tree, tcp(7)
 * (TCP_ULP), <linux/tls.h>, net/ipv4/tcp_ulp.c (__tcp_ulp_find_autoload).
 */
#ifndef KTLS_H
#define KTLS_H

#include <stddef.h>
#include <sys/types.h>

#include "record.h"

/*
 * 1 if this kernel takes TCP_ULP "tls", 0 if not, -1/errno if it could not
 * be tried. It is tried for real, on a loopback TCP connection made for the
 * purpose (and closed): /proc/sys/net/ipv4/tcp_available_ulp lists only the
 * modules already loaded, while the setsockopt loads "tls" on demand when
 * the caller has CAP_NET_ADMIN. `why` gets one line saying what happened.
 */
int ktls_available(char *why, size_t cap);

/* What ktls_install did to the socket. */
enum ktls_status {
	KTLS_OK = 0,     /* both directions are in the kernel */
	KTLS_NO_ULP = 1, /* TCP_ULP refused: the socket is untouched, user space may go on */
	KTLS_BROKEN = 2, /* the ULP is attached but a direction failed: close the socket,
			  * never write records of one's own on it */
	KTLS_ADOPTED = 3, /* both directions are in the kernel, and were (some or all)
			   * already: put there by a process that held the socket before */
};

/* Test-only: refuse TLS_RX after TLS_TX is in (as a kernel without the
 * suite's receive side would), to show that the caller fails closed. */
enum { KTLS_TEST_REFUSE_RX = 1 };

/*
 * Attaches TCP_ULP "tls" to the connected socket fd, then TLS_TX from wr and
 * TLS_RX from rd. Returns a ktls_status; errno says why for NO_ULP and BROKEN
 * (NO_ULP: ENOENT, no tls module; ENOTCONN, the connection is no longer
 * established). fd stays the caller's either way.
 * A socket can outlive a process that began this on it (stage 06: a worker
 * that dies before its ack; the dispatcher hands the same descriptor and
 * state to another). Then TCP_ULP says EEXIST, and each direction already in
 * the kernel must be exactly wr or rd - suite, key, iv and sequence number,
 * read back with getsockopt - or the result is BROKEN (EPROTO); a direction
 * not in yet is installed. That gives ADOPTED.
 */
int ktls_install(int fd, const struct rec_dir *rd, const struct rec_dir *wr, unsigned flags);

/*
 * One recvmsg(2) on a kTLS socket: bytes of one record type, which goes to
 * *type (CT_APPLICATION_DATA, or CT_ALERT or CT_HANDSHAKE of record.h: a
 * record that the kernel hands up whole with a TLS_GET_RECORD_TYPE control message). >0 bytes, 0 at
 * end of file, -1/errno (EBADMSG: a record failed authentication; EIO: a
 * control record did not fit the control buffer). Waits at most timeout_ms
 * (ETIMEDOUT); with timeout_ms 0 it does not wait, and a non-blocking
 * socket with nothing decrypted yet gives EAGAIN. flags go to recvmsg
 * (MSG_PEEK: look at the next record's type and bytes, leave them queued).
 */
ssize_t ktls_recv(int fd, void *buf, size_t cap, int *type, int timeout_ms, int flags);

/* What a record that is not application data means for the connection. */
enum ktls_control {
	KTLS_CLOSE_NOTIFY = 1, /* the peer closed cleanly: answer with ours */
	KTLS_PEER_ALERT,       /* the peer sent another alert: over, nothing to send */
	KTLS_PEER_KEY_UPDATE,  /* a well-formed KeyUpdate: the kernel stopped reading here */
	KTLS_BAD_RECORD,       /* a malformed alert or KeyUpdate, or a message a client may
				* not send: send *alert and close */
};

/*
 * Classifies one record of type `type` (not application data) whose len
 * bytes ktls_recv put at b, with the record layer's checks (RFC 8446
 * sections 4.6.3 and 6). *alert: the peer's alert (KTLS_PEER_ALERT), or the
 * one to send (KTLS_BAD_RECORD; internal_error for KTLS_PEER_KEY_UPDATE:
 * before Linux 6.14 the kernel cannot take the peer's next key).
 * *requested: KTLS_PEER_KEY_UPDATE's request_update value.
 */
int ktls_control(int type, const unsigned char *b, size_t len, int *alert, int *requested);

/* Sends one alert record (level 1 warning or 2 fatal, and description) on a
 * kTLS socket, through a TLS_SET_RECORD_TYPE control message. -1/errno. */
int ktls_send_alert(int fd, int level, int description);

#endif
