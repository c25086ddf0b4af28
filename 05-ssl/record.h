/*
 * record.h - a TLS 1.3 record layer on libcrypto alone: what a process needs
 * to carry on a TLS 1.3 session that another process handshook.
 *
 * One `struct rec_dir` is one direction of a connection (read or write): the
 * cipher suite, the traffic secret, the key and iv derived from it, and the
 * 64-bit record sequence number. That is *all* the state TLS 1.3 keeps per
 * direction once the handshake is over - which is why it can be handed to
 * another process (stage 05, after-handshake mode), or to the kernel (kTLS).
 *
 *   key   = HKDF-Expand-Label(secret, "key", "", key_length)     RFC 8446 7.3
 *   iv    = HKDF-Expand-Label(secret, "iv",  "", 12)
 *   nonce = iv XOR (the sequence number, big-endian, left-padded to 12)  5.3
 *   AAD   = the 5-byte record header (type 23, 0x0303, length)            5.2
 *   inner = content || real content type (1 byte) || zero padding        5.2
 *   next secret after a KeyUpdate =
 *           HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)    7.2
 *
 * Nothing here does I/O, prints or exits. Functions return 0 on success;
 * rec_open() returns a TLS alert description on a bad record (the caller
 * sends that alert and closes); the others return -1 and set errno.
 *
 * Keys out of core dumps: a direction's secret, key and iv live in a page of
 * their own, mapped by rec_init() and marked MADV_DONTDUMP (madvise(2)), so a
 * crashing worker does not write them into a core file; rec_free() wipes it
 * with OPENSSL_cleanse and unmaps it. Two copies are beyond this file: the
 * AES/ChaCha key schedule inside the EVP_CIPHER_CTX is on OpenSSL's heap, and
 * the plaintext is in the caller's buffers. A process that must never dump
 * any of it sets RLIMIT_CORE to 0 as well (getrlimit(2), core(5)).
 *
 * See also: RFC 8446 sections 5 (record protocol), 6 (alerts), 7 (key
 * schedule); RFC 8448 section 3 (test vectors); EVP_EncryptInit(3),
 * EVP_PKEY_CTX_set_hkdf_md(3).
 */
#ifndef RECORD_H
#define RECORD_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

/* The three TLS 1.3 cipher suites OpenSSL enables by default (RFC 8446 B.4). */
enum {
	SUITE_AES_128_GCM_SHA256 = 0x1301,
	SUITE_AES_256_GCM_SHA384 = 0x1302,
	SUITE_CHACHA20_POLY1305_SHA256 = 0x1303,
};

/* Outer and inner content types (RFC 8446 5.1). */
enum { CT_CHANGE_CIPHER_SPEC = 20, CT_ALERT = 21, CT_HANDSHAKE = 22, CT_APPLICATION_DATA = 23 };

/* The alerts this layer can ask its caller to send (RFC 8446 6). */
enum {
	ALERT_CLOSE_NOTIFY = 0,
	ALERT_UNEXPECTED_MESSAGE = 10,
	ALERT_BAD_RECORD_MAC = 20,
	ALERT_RECORD_OVERFLOW = 22,
	ALERT_ILLEGAL_PARAMETER = 47,
	ALERT_DECODE_ERROR = 50,
	ALERT_INTERNAL_ERROR = 80,
};

/* Handshake message type of a KeyUpdate, and its one-byte body (4.6.3). */
enum { HS_KEY_UPDATE = 24, KU_NOT_REQUESTED = 0, KU_REQUESTED = 1 };

#define REC_HEADER 5
#define REC_TAG 16
#define REC_MAX_PLAIN 16384                   /* 2^14: TLSInnerPlaintext content */
#define REC_MAX_CIPHER (REC_MAX_PLAIN + 256)  /* 2^14 + 256: the RFC's bound on the wire */
#define REC_MAX_INNER (REC_MAX_PLAIN + 1)     /* TLSInnerPlaintext: content, type, padding */
#define REC_MAX_SECRET 48                     /* SHA-384 */
#define REC_IV 12

/* Records one key may protect before it must be replaced (RFC 8446 5.5):
 * 2^24.5 for AES-GCM; ChaCha20-Poly1305's limit is beyond 2^64. */
#define REC_AES_GCM_LIMIT 23726566ULL

/* secret, key and iv point into one page that rec_init() maps (see above);
 * all three are NULL before rec_init() and after rec_free(). */
struct rec_dir {
	uint16_t suite;
	size_t secret_len;              /* Hash.length: 32 or 48 */
	uint8_t *secret;                /* [REC_MAX_SECRET]: the current traffic secret */
	size_t key_len;                 /* 16 or 32 */
	uint8_t *key;                   /* [32] */
	uint8_t *iv;                    /* [REC_IV] */
	uint64_t seq;                   /* the next record's sequence number; it restarts at
	                                   0 with every key, so it also counts the records
	                                   the current key has protected (the AEAD limit) */
	uint64_t updates;               /* KeyUpdates so far in this direction */
	EVP_CIPHER_CTX *ctx;
	int encrypt;                    /* 1: this is a write direction */
};

/* The suite's name ("TLS_AES_128_GCM_SHA256"), or NULL if not one of the three. */
const char *rec_suite_name(uint16_t suite);
/* Hash.length of the suite (32 or 48), or 0 if it is not one of the three. */
size_t rec_secret_len(uint16_t suite);
/* Records the current key may still protect before a KeyUpdate is due. */
uint64_t rec_key_limit(uint16_t suite);

/* HKDF-Expand-Label(secret, label, context, out_len) with "tls13 " prefixed.
 * md is the suite's hash. -1/errno (EINVAL for sizes HkdfLabel cannot hold). */
int rec_hkdf_expand_label(const EVP_MD *md, const uint8_t *secret, size_t secret_len,
			  const char *label, const uint8_t *context, size_t context_len,
			  uint8_t *out, size_t out_len);

/* Sets up one direction from its traffic secret and next sequence number
 * (the secret is copied into the direction's own page; the caller wipes its
 * copy). encrypt: 1 for the direction we write. -1/errno (EINVAL: unknown
 * suite, wrong secret length, seq at the end of its range; ENOMEM). d must
 * not be set up already (rec_free it first: its page would be lost). */
int rec_init(struct rec_dir *d, uint16_t suite, const uint8_t *secret, size_t secret_len,
	     uint64_t seq, int encrypt);
/* A KeyUpdate in this direction: next traffic secret, new key and iv, seq 0.
 * The next secret is derived in the direction's page and wiped there on
 * every path. -1/errno. */
int rec_update(struct rec_dir *d);
/* Wipes secret, key and iv, unmaps their page, frees the cipher context.
 * Safe to call twice, and on a direction rec_init() refused. */
void rec_free(struct rec_dir *d);

/* Protects one record: out gets header + ciphertext + tag, *out_len its size.
 * type is the real (inner) content type; pad zero bytes of padding are added.
 * -1/errno: EMSGSIZE (len + pad > 2^14 or out too small), EOVERFLOW (the
 * sequence number would wrap: a connection must end before 2^64-1 records). */
int rec_seal(struct rec_dir *d, uint8_t type, const void *data, size_t len, size_t pad,
	     uint8_t *out, size_t cap, size_t *out_len);

/* Checks a record header before its body is read: 0 if a body of *body_len
 * bytes may follow, else the alert to send: unexpected_message for an outer
 * type other than application_data; record_overflow for a body that cannot
 * hold a legal TLSInnerPlaintext (over 2^14 + 1 bytes of content, type and
 * padding plus the 16-byte tag every suite here has: 5.2, 5.4); decode_error
 * for a body too short to hold a tag and a content type. */
int rec_check_header(const uint8_t hdr[REC_HEADER], size_t *body_len);

/* Opens one whole record (header + body) in place: 0 and *type, *plain,
 * *plain_len (pointing into rec), or the alert to send: bad_record_mac when
 * authentication fails, record_overflow when the plaintext is over 2^14,
 * unexpected_message when no content type is found (all padding),
 * internal_error when the sequence number would wrap. */
int rec_open(struct rec_dir *d, uint8_t *rec, size_t rec_len, uint8_t *type, uint8_t **plain,
	     size_t *plain_len);

/* Parses one KeyUpdate handshake message at p[0..len): 0 and *request
 * (KU_NOT_REQUESTED / KU_REQUESTED), or the alert: decode_error for a bad
 * length, illegal_parameter for a request value other than 0 or 1,
 * unexpected_message for another handshake type. Exactly one message per
 * record is accepted: a KeyUpdate must be the last thing under a key. */
int rec_parse_key_update(const uint8_t *p, size_t len, int *request);

/* The alert's name ("bad_record_mac"), for narration. */
const char *rec_alert_name(int alert);

#endif
