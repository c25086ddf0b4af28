/*
 * record.c - the TLS 1.3 record layer of record.h, on libcrypto's EVP AEAD.
 *
 * Read it next to RFC 8446 section 5.2: rec_seal() builds a TLSCiphertext
 * exactly as the RFC lays it out, rec_open() undoes it and checks every
 * length on the way. No SSL object, no libssl: a worker that receives a
 * handed-off session runs on this file alone.
 */
#define _GNU_SOURCE
#include "record.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/kdf.h>

/* ---- suites and the key schedule ---------------------------------------- */

const char *rec_suite_name(uint16_t suite)
{
	switch (suite) {
	case SUITE_AES_128_GCM_SHA256:
		return "TLS_AES_128_GCM_SHA256";
	case SUITE_AES_256_GCM_SHA384:
		return "TLS_AES_256_GCM_SHA384";
	case SUITE_CHACHA20_POLY1305_SHA256:
		return "TLS_CHACHA20_POLY1305_SHA256";
	}
	return NULL;
}

size_t rec_secret_len(uint16_t suite)
{
	switch (suite) {
	case SUITE_AES_128_GCM_SHA256:
	case SUITE_CHACHA20_POLY1305_SHA256:
		return 32;
	case SUITE_AES_256_GCM_SHA384:
		return 48;
	}
	return 0;
}

uint64_t rec_key_limit(uint16_t suite)
{
	return suite == SUITE_CHACHA20_POLY1305_SHA256 ? UINT64_MAX : REC_AES_GCM_LIMIT;
}

static const EVP_MD *suite_md(uint16_t suite)
{
	return suite == SUITE_AES_256_GCM_SHA384 ? EVP_sha384() : EVP_sha256();
}

static const EVP_CIPHER *suite_cipher(uint16_t suite, size_t *key_len)
{
	switch (suite) {
	case SUITE_AES_128_GCM_SHA256:
		*key_len = 16;
		return EVP_aes_128_gcm();
	case SUITE_AES_256_GCM_SHA384:
		*key_len = 32;
		return EVP_aes_256_gcm();
	case SUITE_CHACHA20_POLY1305_SHA256:
		*key_len = 32;
		return EVP_chacha20_poly1305();
	}
	return NULL;
}

int rec_hkdf_expand_label(const EVP_MD *md, const uint8_t *secret, size_t secret_len,
			  const char *label, const uint8_t *context, size_t context_len,
			  uint8_t *out, size_t out_len)
{
	/* struct HkdfLabel { uint16 length; opaque label<7..255> = "tls13 " + label;
	 *                    opaque context<0..255>; }                   (7.1) */
	static const char prefix[] = "tls13 ";
	size_t label_len = strlen(label), full = sizeof prefix - 1 + label_len;
	if (full > 255 || context_len > 255 || out_len > 0xffff || out_len == 0) {
		errno = EINVAL;
		return -1;
	}
	uint8_t info[2 + 1 + 255 + 1 + 255];
	size_t i = 0;
	info[i++] = (uint8_t)(out_len >> 8);
	info[i++] = (uint8_t)out_len;
	info[i++] = (uint8_t)full;
	memcpy(info + i, prefix, sizeof prefix - 1);
	i += sizeof prefix - 1;
	memcpy(info + i, label, label_len);
	i += label_len;
	info[i++] = (uint8_t)context_len;
	if (context_len)
		memcpy(info + i, context, context_len);
	i += context_len;

	/* Expand only: the secret already is a pseudorandom key (RFC 5869 2.3). */
	int ok = 0;
	EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	size_t got = out_len;
	if (pctx && EVP_PKEY_derive_init(pctx) > 0 &&
	    EVP_PKEY_CTX_set_hkdf_mode(pctx, EVP_PKEY_HKDEF_MODE_EXPAND_ONLY) > 0 &&
	    EVP_PKEY_CTX_set_hkdf_md(pctx, md) > 0 &&
	    EVP_PKEY_CTX_set1_hkdf_key(pctx, secret, (int)secret_len) > 0 &&
	    EVP_PKEY_CTX_add1_hkdf_info(pctx, info, (int)i) > 0 &&
	    EVP_PKEY_derive(pctx, out, &got) > 0 && got == out_len)
		ok = 1;
	EVP_PKEY_CTX_free(pctx);
	if (!ok) {
		errno = EPROTO;
		return -1;
	}
	return 0;
}

/* key and iv from the current secret, and a cipher context keyed with them. */
static int derive(struct rec_dir *d)
{
	const EVP_CIPHER *cipher = suite_cipher(d->suite, &d->key_len);
	const EVP_MD *md = suite_md(d->suite);
	if (rec_hkdf_expand_label(md, d->secret, d->secret_len, "key", NULL, 0, d->key, d->key_len) < 0 ||
	    rec_hkdf_expand_label(md, d->secret, d->secret_len, "iv", NULL, 0, d->iv, REC_IV) < 0)
		return -1;
	if (!d->ctx && !(d->ctx = EVP_CIPHER_CTX_new())) {
		errno = ENOMEM;
		return -1;
	}
	/* The key is set once per key; the nonce changes per record (set_nonce). */
	int ok = d->encrypt ? EVP_EncryptInit_ex(d->ctx, cipher, NULL, d->key, NULL)
			    : EVP_DecryptInit_ex(d->ctx, cipher, NULL, d->key, NULL);
	if (ok != 1 || EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_SET_IVLEN, REC_IV, NULL) != 1) {
		errno = EPROTO;
		return -1;
	}
	return 0;
}

/* ---- the keys' own page ------------------------------------------------- */

/* Where secret, key and iv sit in a direction's page; `next` is where a
 * KeyUpdate derives the next secret, so no copy of it is ever on the stack. */
enum { PAGE_SECRET = 0, PAGE_NEXT = 64, PAGE_KEY = 128, PAGE_IV = 192, PAGE_USED = 256 };

static size_t page_size(void)
{
	long n = sysconf(_SC_PAGESIZE);
	return n >= PAGE_USED ? (size_t)n : 4096;
}

/* Maps a page for d's secrets and asks the kernel to leave it out of core
 * dumps. A mapping of its own, not malloc: madvise works on whole pages, and
 * a heap page would also hold whatever else malloc put next to the keys. */
static int map_keys(struct rec_dir *d)
{
	uint8_t *p = mmap(NULL, page_size(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		errno = ENOMEM;
		return -1;
	}
	if (madvise(p, page_size(), MADV_DONTDUMP) < 0) {
		int saved = errno;
		munmap(p, page_size());
		errno = saved;
		return -1;
	}
	d->secret = p + PAGE_SECRET;
	d->key = p + PAGE_KEY;
	d->iv = p + PAGE_IV;
	return 0;
}

/* ---- one direction's life ----------------------------------------------- */

int rec_init(struct rec_dir *d, uint16_t suite, const uint8_t *secret, size_t secret_len,
	     uint64_t seq, int encrypt)
{
	*d = (struct rec_dir){ .suite = suite, .seq = seq, .encrypt = encrypt };
	if (!rec_suite_name(suite) || secret_len != rec_secret_len(suite) || seq == UINT64_MAX) {
		errno = EINVAL;
		return -1;
	}
	if (map_keys(d) < 0)
		return -1;
	d->secret_len = secret_len;
	memcpy(d->secret, secret, secret_len);
	if (derive(d) < 0) {
		int saved = errno;
		rec_free(d);
		errno = saved;
		return -1;
	}
	return 0;
}

int rec_update(struct rec_dir *d)
{
	if (!d->secret) {
		errno = EINVAL;
		return -1;
	}
	uint8_t *next = d->secret - PAGE_SECRET + PAGE_NEXT;
	int rc = rec_hkdf_expand_label(suite_md(d->suite), d->secret, d->secret_len, "traffic upd",
				       NULL, 0, next, d->secret_len);
	if (rc == 0)
		memcpy(d->secret, next, d->secret_len);
	/* on failure too: a half-written next secret is still secret */
	OPENSSL_cleanse(next, REC_MAX_SECRET);
	if (rc < 0)
		return -1;
	d->seq = 0; /* a new key starts a new nonce sequence (5.3) */
	d->updates++;
	return derive(d);
}

void rec_free(struct rec_dir *d)
{
	if (d->secret) {
		uint8_t *page = d->secret - PAGE_SECRET;
		OPENSSL_cleanse(page, PAGE_USED);
		munmap(page, page_size());
	}
	d->secret = d->key = d->iv = NULL;
	EVP_CIPHER_CTX_free(d->ctx); /* clears its key schedule too */
	d->ctx = NULL;
}

/* ---- records ------------------------------------------------------------ */

/* nonce = iv XOR seq, the sequence number big-endian in the last 8 bytes. */
static void make_nonce(const struct rec_dir *d, uint8_t nonce[REC_IV])
{
	memcpy(nonce, d->iv, REC_IV);
	for (int i = 0; i < 8; i++)
		nonce[REC_IV - 1 - i] ^= (uint8_t)(d->seq >> (8 * i));
}

int rec_seal(struct rec_dir *d, uint8_t type, const void *data, size_t len, size_t pad,
	     uint8_t *out, size_t cap, size_t *out_len)
{
	size_t inner = len + 1 + pad, total = REC_HEADER + inner + REC_TAG;
	if (len > REC_MAX_PLAIN || pad > REC_MAX_PLAIN || inner > REC_MAX_PLAIN + 1 || total > cap) {
		errno = EMSGSIZE;
		return -1;
	}
	/* 2^64-1 is never used: one more record and the counter would wrap to a
	 * nonce already spent under this key. The connection has to end first. */
	if (d->seq == UINT64_MAX || !d->ctx) {
		errno = EOVERFLOW;
		return -1;
	}
	uint8_t *hdr = out, *body = out + REC_HEADER;
	hdr[0] = CT_APPLICATION_DATA; /* the outer type hides the real one (5.2) */
	hdr[1] = 0x03;
	hdr[2] = 0x03;
	hdr[3] = (uint8_t)((inner + REC_TAG) >> 8);
	hdr[4] = (uint8_t)(inner + REC_TAG);
	if (len) /* data may be NULL for an empty record */
		memmove(body, data, len); /* may overlap when sealing in place */
	body[len] = type;
	memset(body + len + 1, 0, pad);

	uint8_t nonce[REC_IV];
	make_nonce(d, nonce);
	int n1 = 0, n2 = 0, ok = EVP_EncryptInit_ex(d->ctx, NULL, NULL, NULL, nonce) == 1 &&
				 EVP_EncryptUpdate(d->ctx, NULL, &n1, hdr, REC_HEADER) == 1 &&
				 EVP_EncryptUpdate(d->ctx, body, &n1, body, (int)inner) == 1 &&
				 EVP_EncryptFinal_ex(d->ctx, body + n1, &n2) == 1 &&
				 EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_GET_TAG, REC_TAG, body + inner) == 1;
	OPENSSL_cleanse(nonce, sizeof nonce);
	if (!ok) {
		errno = EPROTO;
		return -1;
	}
	d->seq++;
	*out_len = total;
	return 0;
}

int rec_check_header(const uint8_t hdr[REC_HEADER], size_t *body_len)
{
	size_t len = (size_t)hdr[3] << 8 | hdr[4];
	*body_len = len;
	/* After the handshake every protected record says application_data on
	 * the outside; a change_cipher_spec or a plaintext handshake record now
	 * is an unexpected message (5, 5.1). legacy_record_version is ignored
	 * (5.1), but it is part of the AAD, so a changed one fails the tag. */
	if (hdr[0] != CT_APPLICATION_DATA)
		return ALERT_UNEXPECTED_MESSAGE;
	/* The RFC's outer bound is 2^14 + 256 (5.2), but a TLSInnerPlaintext may
	 * not exceed 2^14 + 1 bytes (5.4), and every suite here adds a 16-byte
	 * tag: anything longer is an overflow we can see before reading it. */
	if (len > REC_MAX_INNER + REC_TAG)
		return ALERT_RECORD_OVERFLOW;
	if (len < REC_TAG + 1)
		return ALERT_DECODE_ERROR;
	return 0;
}

int rec_open(struct rec_dir *d, uint8_t *rec, size_t rec_len, uint8_t *type, uint8_t **plain,
	     size_t *plain_len)
{
	size_t body_len;
	if (rec_len < REC_HEADER)
		return ALERT_DECODE_ERROR;
	int alert = rec_check_header(rec, &body_len);
	if (alert)
		return alert;
	if (body_len != rec_len - REC_HEADER)
		return ALERT_DECODE_ERROR;
	if (d->seq == UINT64_MAX || !d->ctx)
		return ALERT_INTERNAL_ERROR;

	uint8_t *body = rec + REC_HEADER, nonce[REC_IV];
	size_t inner = body_len - REC_TAG;
	make_nonce(d, nonce);
	int n1 = 0, n2 = 0, ok = EVP_DecryptInit_ex(d->ctx, NULL, NULL, NULL, nonce) == 1 &&
				 EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_SET_TAG, REC_TAG, body + inner) == 1 &&
				 EVP_DecryptUpdate(d->ctx, NULL, &n1, rec, REC_HEADER) == 1 &&
				 EVP_DecryptUpdate(d->ctx, body, &n1, body, (int)inner) == 1 &&
				 EVP_DecryptFinal_ex(d->ctx, body + n1, &n2) == 1;
	OPENSSL_cleanse(nonce, sizeof nonce);
	if (!ok) {
		OPENSSL_cleanse(body, inner); /* never hand out unauthenticated bytes */
		return ALERT_BAD_RECORD_MAC;
	}
	d->seq++;

	/* The real content type is the last non-zero byte; zeros after it are
	 * padding. All zeros: no type at all (5.4). */
	size_t end = inner;
	while (end > 0 && body[end - 1] == 0)
		end--;
	if (end == 0)
		return ALERT_UNEXPECTED_MESSAGE;
	if (end - 1 > REC_MAX_PLAIN)
		return ALERT_RECORD_OVERFLOW;
	*type = body[end - 1];
	*plain = body;
	*plain_len = end - 1;
	return 0;
}

int rec_parse_key_update(const uint8_t *p, size_t len, int *request)
{
	/* Handshake { msg_type(1) = 24; uint24 length = 1; KeyUpdateRequest(1) } */
	if (len < 4)
		return ALERT_DECODE_ERROR;
	if (p[0] != HS_KEY_UPDATE)
		return ALERT_UNEXPECTED_MESSAGE; /* nothing else may come after the handshake here */
	size_t body = (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
	if (body != 1 || len != 5)
		return ALERT_DECODE_ERROR;
	if (p[4] != KU_NOT_REQUESTED && p[4] != KU_REQUESTED)
		return ALERT_ILLEGAL_PARAMETER;
	*request = p[4];
	return 0;
}

const char *rec_alert_name(int alert)
{
	switch (alert) {
	case ALERT_CLOSE_NOTIFY:
		return "close_notify";
	case ALERT_UNEXPECTED_MESSAGE:
		return "unexpected_message";
	case ALERT_BAD_RECORD_MAC:
		return "bad_record_mac";
	case ALERT_RECORD_OVERFLOW:
		return "record_overflow";
	case ALERT_ILLEGAL_PARAMETER:
		return "illegal_parameter";
	case ALERT_DECODE_ERROR:
		return "decode_error";
	case ALERT_INTERNAL_ERROR:
		return "internal_error";
	}
	return "alert";
}
