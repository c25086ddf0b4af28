/*
 * ktls.c - kTLS install for ktls.h. See the warning there: untested here.
 */
#define _GNU_SOURCE
#include "ktls.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

int ktls_available(char *ulps, size_t cap)
{
	int fd = open("/proc/sys/net/ipv4/tcp_available_ulp", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t r = read(fd, ulps, cap - 1);
	int saved = errno;
	close(fd);
	if (r < 0) {
		errno = saved;
		return -1;
	}
	ulps[r] = '\0';
	ulps[strcspn(ulps, "\n")] = '\0';
	/* a space-separated list of names: look for the word "tls" */
	for (char *p = ulps; (p = strstr(p, "tls")) != NULL; p += 3)
		if ((p == ulps || p[-1] == ' ') && (p[3] == '\0' || p[3] == ' '))
			return 1;
	return 0;
}

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

int ktls_install(int fd, const struct rec_dir *rd, const struct rec_dir *wr)
{
	union crypto_info ci;
	socklen_t len;
	if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") < 0)
		return -1;
	int rc = -1;
	if (fill(&ci, wr, &len) == 0 && setsockopt(fd, SOL_TLS, TLS_TX, &ci, len) == 0 &&
	    fill(&ci, rd, &len) == 0 && setsockopt(fd, SOL_TLS, TLS_RX, &ci, len) == 0)
		rc = 0;
	int saved = errno;
	OPENSSL_cleanse(&ci, sizeof ci);
	errno = saved;
	return rc;
}
