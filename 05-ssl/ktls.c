/*
 * ktls.c - kernel TLS for ktls.h: the availability probe, the install of a
 * TLS 1.3 session's two directions, and records that are not data.
 *
 * See also: Documentation/networking/tls.rst, <linux/tls.h>, cmsg(3).
 */
#define _GNU_SOURCE
#include "ktls.h"

#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "../common/util.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

/* ---- is it there? ------------------------------------------------------- */

int ktls_available(char *why, size_t cap)
{
	int port, lfd = listen_loopback(0, &port);
	if (lfd < 0)
		return -1;
	int fd = connect_loopback(port);
	if (fd < 0) {
		int saved = errno;
		close(lfd);
		errno = saved;
		return -1;
	}
	/* The ULP attaches only to an established connection (ENOTCONN
	 * otherwise); the connect above completed on loopback, accept or not. */
	int rc = setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls");
	int saved = errno;
	close(fd);
	close(lfd);
	if (rc == 0) {
		snprintf(why, cap, "setsockopt TCP_ULP \"tls\" on a TCP connection succeeded");
		return 1;
	}
	snprintf(why, cap, "setsockopt TCP_ULP \"tls\": %s (%s)%s", strerrorname_np(saved),
		 strerror(saved), saved == ENOENT ? ": no kTLS in this kernel" : "");
	return 0;
}

/* ---- the install -------------------------------------------------------- */

/* One direction's crypto_info. The union is big enough for every suite. */
union crypto_info {
	struct tls12_crypto_info_aes_gcm_128 gcm128;
	struct tls12_crypto_info_aes_gcm_256 gcm256;
	struct tls12_crypto_info_chacha20_poly1305 chacha;
};

static void be64(unsigned char out[8], uint64_t v)
{
	for (int i = 0; i < 8; i++)
		out[i] = (unsigned char)(v >> (56 - 8 * i));
}

static int fill(union crypto_info *ci, const struct rec_dir *d, socklen_t *len)
{
	memset(ci, 0, sizeof *ci);
	switch (d->suite) {
	case SUITE_AES_128_GCM_SHA256:
		ci->gcm128.info.version = TLS_1_3_VERSION;
		ci->gcm128.info.cipher_type = TLS_CIPHER_AES_GCM_128;
		memcpy(ci->gcm128.key, d->key, 16);
		memcpy(ci->gcm128.salt, d->iv, 4); /* iv = salt || 8-byte iv */
		memcpy(ci->gcm128.iv, d->iv + 4, 8);
		be64(ci->gcm128.rec_seq, d->seq);
		*len = sizeof ci->gcm128;
		return 0;
	case SUITE_AES_256_GCM_SHA384:
		ci->gcm256.info.version = TLS_1_3_VERSION;
		ci->gcm256.info.cipher_type = TLS_CIPHER_AES_GCM_256;
		memcpy(ci->gcm256.key, d->key, 32);
		memcpy(ci->gcm256.salt, d->iv, 4);
		memcpy(ci->gcm256.iv, d->iv + 4, 8);
		be64(ci->gcm256.rec_seq, d->seq);
		*len = sizeof ci->gcm256;
		return 0;
	case SUITE_CHACHA20_POLY1305_SHA256:
		ci->chacha.info.version = TLS_1_3_VERSION;
		ci->chacha.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
		memcpy(ci->chacha.key, d->key, 32);
		memcpy(ci->chacha.iv, d->iv, 12); /* no salt for ChaCha20 */
		be64(ci->chacha.rec_seq, d->seq);
		*len = sizeof ci->chacha;
		return 0;
	}
	errno = EINVAL;
	return -1;
}

/* Installs one direction (TLS_TX or TLS_RX); the key copy is wiped. */
static int install_dir(int fd, int optname, const struct rec_dir *d)
{
	union crypto_info ci;
	socklen_t len;
	int rc = fill(&ci, d, &len) == 0 ? setsockopt(fd, SOL_TLS, optname, &ci, len) : -1;
	int saved = errno;
	OPENSSL_cleanse(&ci, sizeof ci);
	errno = saved;
	return rc;
}

/* With the ULP already attached: 1 if the direction is in the kernel and is
 * exactly d, 0 if it is not in yet (EBUSY), -1/errno otherwise (EPROTO: it
 * is another state). The copies read back are wiped. */
static int dir_matches(int fd, int optname, const struct rec_dir *d)
{
	union crypto_info want, got;
	socklen_t len, glen;
	int rc = fill(&want, d, &len);
	if (rc == 0) {
		glen = len; /* the kernel answers with the whole state only to its exact size */
		memset(&got, 0, sizeof got);
		if (getsockopt(fd, SOL_TLS, optname, &got, &glen) == 0)
			rc = glen == len && memcmp(&got, &want, len) == 0 ? 1 : (errno = EPROTO, -1);
		else
			rc = errno == EBUSY ? 0 : errno == EINVAL ? (errno = EPROTO, -1) : -1;
	}
	int saved = errno;
	OPENSSL_cleanse(&want, sizeof want);
	OPENSSL_cleanse(&got, sizeof got);
	errno = saved;
	return rc;
}

int ktls_install(int fd, const struct rec_dir *rd, const struct rec_dir *wr, unsigned flags)
{
	if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") < 0) {
		if (errno != EEXIST)
			return KTLS_NO_ULP;
		/* Someone before us attached it, and may have installed a
		 * direction or both before it died. What is in must be our state
		 * to the byte (the same suite, key, iv, next sequence number: no
		 * record went through it since); what is not, we put in. */
		int tx = dir_matches(fd, TLS_TX, wr), rx = tx < 0 ? -1 : dir_matches(fd, TLS_RX, rd);
		if (tx < 0 || rx < 0)
			return KTLS_BROKEN;
		if (tx == 0 && install_dir(fd, TLS_TX, wr) < 0)
			return KTLS_BROKEN;
		if (rx == 0 && (flags & KTLS_TEST_REFUSE_RX)) {
			errno = ENOPROTOOPT;
			return KTLS_BROKEN;
		}
		if (rx == 0 && install_dir(fd, TLS_RX, rd) < 0)
			return KTLS_BROKEN;
		return KTLS_ADOPTED;
	}
	/* From here on the socket is the kernel's TLS socket, and a failure
	 * leaves it half-done: with TLS_TX in, everything written is sealed by
	 * the kernel, so records sealed in user space would be sealed twice,
	 * the second time under a key and nonce the kernel also uses. There is
	 * no way back (the ULP cannot be detached): the caller must close. */
	if (install_dir(fd, TLS_TX, wr) < 0)
		return KTLS_BROKEN;
	if (flags & KTLS_TEST_REFUSE_RX) {
		errno = ENOPROTOOPT;
		return KTLS_BROKEN;
	}
	if (install_dir(fd, TLS_RX, rd) < 0)
		return KTLS_BROKEN;
	return KTLS_OK;
}

/* ---- records that are not data ------------------------------------------ */

ssize_t ktls_recv(int fd, void *buf, size_t cap, int *type, int timeout_ms, int flags)
{
	int w = timeout_ms == 0 ? 1 : wait_readable(fd, timeout_ms);
	if (w <= 0) {
		if (w == 0)
			errno = ETIMEDOUT;
		return -1;
	}
	/* The kernel passes a record that is not application data up only to a
	 * caller that offers room for its type; without it recvmsg fails (EIO). */
	union {
		char buf[CMSG_SPACE(sizeof(unsigned char))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr msg = { 0 };
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = ctl.buf;
	msg.msg_controllen = sizeof ctl.buf;
	ssize_t r;
	do
		r = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | flags);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -1;
	if (msg.msg_flags & MSG_CTRUNC) { /* cannot happen with room for the type */
		errno = EIO;
		return -1;
	}
	*type = CT_APPLICATION_DATA;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE) {
			unsigned char t;
			memcpy(&t, CMSG_DATA(c), sizeof t);
			*type = t;
		}
	return r;
}

int ktls_control(int type, const unsigned char *b, size_t len, int *alert, int *requested)
{
	*alert = ALERT_UNEXPECTED_MESSAGE; /* a type or message a client may not send */
	*requested = 0;
	if (type == CT_ALERT && len != 2) {
		*alert = ALERT_DECODE_ERROR;
	} else if (type == CT_ALERT) {
		*alert = b[1];
		return b[1] == ALERT_CLOSE_NOTIFY ? KTLS_CLOSE_NOTIFY : KTLS_PEER_ALERT;
	} else if (type == CT_HANDSHAKE && len > 0 && b[0] == HS_KEY_UPDATE) {
		/* Well-formed: type, a 3-byte length of 1, the request value. */
		if (len != 5 || b[1] != 0 || b[2] != 0 || b[3] != 1) {
			*alert = ALERT_DECODE_ERROR;
		} else if (b[4] > KU_REQUESTED) {
			*alert = ALERT_ILLEGAL_PARAMETER;
		} else {
			/* The kernel stopped decrypting at this record: the peer's
			 * next records are under the next traffic secret, which this
			 * kernel cannot be given (TLS_RX again: Linux 6.14 and later). */
			*alert = ALERT_INTERNAL_ERROR;
			*requested = b[4];
			return KTLS_PEER_KEY_UPDATE;
		}
	}
	return KTLS_BAD_RECORD;
}

int ktls_send_alert(int fd, int level, int description)
{
	unsigned char body[2] = { (unsigned char)level, (unsigned char)description };
	unsigned char type = CT_ALERT;
	union {
		char buf[CMSG_SPACE(sizeof type)];
		struct cmsghdr align;
	} ctl;
	memset(&ctl, 0, sizeof ctl);
	struct iovec iov = { .iov_base = body, .iov_len = sizeof body };
	struct msghdr msg = { 0 };
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = ctl.buf;
	msg.msg_controllen = sizeof ctl.buf;
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_TLS;
	c->cmsg_type = TLS_SET_RECORD_TYPE;
	c->cmsg_len = CMSG_LEN(sizeof type);
	memcpy(CMSG_DATA(c), &type, sizeof type);
	ssize_t r;
	do
		r = sendmsg(fd, &msg, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	return r == (ssize_t)sizeof body ? 0 : -1;
}
