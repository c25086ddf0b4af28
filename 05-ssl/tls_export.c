/*
 * tls_export.c - see tls_export.h: exporting a TLS 1.3 session that OpenSSL
 * handshook, and carrying it on with the record layer of record.c.
 */
#define _GNU_SOURCE
#include "tls_export.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/x509v3.h>

/* ---- the exporting side ------------------------------------------------- */

void tlsx_capture_wipe(struct tlsx_capture *c)
{
	OPENSSL_cleanse(c, sizeof *c);
}

int tlsx_make_identity(EVP_PKEY **pkey, X509 **cert)
{
	*cert = NULL;
	*pkey = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	if (!*pkey || !x) {
		X509_free(x);
		return -1;
	}
	X509_NAME *name = X509_get_subject_name(x);
	X509_EXTENSION *san = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name,
						  "DNS:localhost,IP:127.0.0.1");
	int ok = X509_set_version(x, X509_VERSION_3) &&
		 ASN1_INTEGER_set(X509_get_serialNumber(x), (long)getpid()) &&
		 X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
		 X509_gmtime_adj(X509_getm_notAfter(x), 24L * 3600) && X509_set_pubkey(x, *pkey) &&
		 X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
					    (const unsigned char *)"localhost", -1, -1, 0) &&
		 X509_set_issuer_name(x, name) && san && X509_add_ext(x, san, -1) &&
		 X509_sign(x, *pkey, EVP_sha256());
	X509_EXTENSION_free(san);
	if (!ok) {
		X509_free(x);
		return -1;
	}
	*cert = x;
	return 0;
}

static int unhex(const char *s, uint8_t *out, size_t cap, size_t *len)
{
	size_t n = strlen(s);
	if (n % 2 || n / 2 > cap)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (uint8_t)v;
	}
	*len = n / 2;
	return 0;
}

/* "LABEL <client random> <secret>": keeps the two secrets we need, nothing
 * else, and never prints any of it. */
static void keylog_cb(const SSL *ssl, const char *line)
{
	struct tlsx_capture *c = SSL_get_app_data(ssl);
	if (!c)
		return;
	const char *secret = strrchr(line, ' ');
	if (!secret)
		return;
	if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0)
		unhex(secret + 1, c->client_secret, sizeof c->client_secret, &c->client_len);
	else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0)
		unhex(secret + 1, c->server_secret, sizeof c->server_secret, &c->server_len);
}

static void msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
		   SSL *ssl, void *arg)
{
	(void)version;
	(void)arg;
	struct tlsx_capture *c = SSL_get_app_data(ssl);
	if (!c)
		return;
	if (content_type == SSL3_RT_HEADER) { /* one per record, before its content */
		if (write_p)
			c->wr_records++;
		else
			c->rd_records++;
		return;
	}
	if (content_type != SSL3_RT_HANDSHAKE || len < 1)
		return;
	switch (((const uint8_t *)buf)[0]) {
	case SSL3_MT_FINISHED: /* the last record under the handshake key */
		if (write_p)
			c->wr_records = 0;
		else
			c->rd_records = 0;
		break;
	case SSL3_MT_NEWSESSION_TICKET:
		if (write_p)
			c->tickets++;
		break;
	case SSL3_MT_KEY_UPDATE:
		c->key_updates++;
		break;
	}
}

SSL_CTX *tlsx_server_ctx(const struct tlsx_ctx_opts *o, EVP_PKEY *pkey, X509 *cert,
			 const char **failed)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		*failed = "SSL_CTX_new";
		return NULL;
	}
	/* TLS 1.3 only: its per-direction state is what is handed over. */
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION)) {
		*failed = "SSL_CTX_set_min_proto_version";
		goto fail;
	}
	if (o->suites && !SSL_CTX_set_ciphersuites(ctx, o->suites)) {
		*failed = "SSL_CTX_set_ciphersuites";
		goto fail;
	}
	if (o->cert_file) {
		if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
			*failed = o->cert_file;
			goto fail;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) != 1) {
			*failed = o->key_file;
			goto fail;
		}
	} else if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, pkey) != 1) {
		*failed = "SSL_CTX_use_certificate";
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		*failed = "SSL_CTX_check_private_key";
		goto fail;
	}
	/* Read-ahead off: OpenSSL then reads a record's header and body and not
	 * one byte more, so nothing raw is stranded in its buffer at handoff. */
	SSL_CTX_set_read_ahead(ctx, o->read_ahead);
	SSL_CTX_set_num_tickets(ctx, (size_t)o->tickets);
	SSL_CTX_set_keylog_callback(ctx, keylog_cb);
	SSL_CTX_set_msg_callback(ctx, msg_cb);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

const char *tlsx_cannot_export(SSL *ssl, const struct tlsx_capture *c, const char **code)
{
	uint16_t suite = SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(ssl));
	if ((*code = "version", SSL_version(ssl) != TLS1_3_VERSION))
		return "not TLS 1.3";
	if ((*code = "suite", !rec_suite_name(suite)))
		return "a cipher suite my worker does not implement";
	if ((*code = "shutdown", SSL_get_shutdown(ssl) != 0))
		return "a shutdown is under way";
	if ((*code = "key_update", c->key_updates || SSL_get_key_update_type(ssl) != SSL_KEY_UPDATE_NONE))
		return "a KeyUpdate happened or is pending (OpenSSL 3.0 does not tell me the new secrets)";
	if ((*code = "read_ahead", SSL_has_pending(ssl)))
		return "OpenSSL holds raw bytes it read ahead and has not decrypted; they cannot be exported";
	if ((*code = "secrets", c->client_len != rec_secret_len(suite) || c->server_len != rec_secret_len(suite)))
		return "the keylog callback did not deliver both traffic secrets";
	*code = NULL;
	return NULL;
}

void tlsx_export(SSL *ssl, const struct tlsx_capture *c, struct handoff_state *st)
{
	st->suite = SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(ssl));
	st->rd.secret_len = c->client_len;
	memcpy(st->rd.secret, c->client_secret, c->client_len);
	st->rd.seq = c->rd_records;
	st->wr.secret_len = c->server_len;
	memcpy(st->wr.secret, c->server_secret, c->server_len);
	st->wr.seq = c->wr_records;
	st->pending_len = 0;
}

/* ---- the taking-over side ----------------------------------------------- */

int tlsx_sess_init(struct tlsx_sess *s, struct handoff_state *st, uint64_t rekey_after)
{
	memset(s, 0, offsetof(struct tlsx_sess, in));
	int rc = rec_init(&s->rd, st->suite, st->rd.secret, st->rd.secret_len, st->rd.seq, 0);
	if (rc == 0)
		rc = rec_init(&s->wr, st->suite, st->wr.secret, st->wr.secret_len, st->wr.seq, 1);
	int saved = errno;
	hs_wipe(st); /* the secrets live on only inside s->rd, s->wr */
	if (rc < 0) {
		tlsx_sess_free(s);
		errno = saved;
		return -1;
	}
	s->limit = rec_key_limit(s->wr.suite);
	if (rekey_after && rekey_after < s->limit)
		s->limit = rekey_after;
	return 0;
}

void tlsx_sess_free(struct tlsx_sess *s)
{
	rec_free(&s->rd);
	rec_free(&s->wr);
	OPENSSL_cleanse(s->in, s->in_len);
	s->in_len = s->rec_len = s->plain_len = 0;
	s->plain = NULL;
}

size_t tlsx_in_room(struct tlsx_sess *s, uint8_t **p)
{
	*p = s->in + s->in_len;
	return sizeof s->in - s->in_len;
}

void tlsx_in_added(struct tlsx_sess *s, size_t n)
{
	s->in_len += n;
}

/* The length of the whole record at in[off], 0 if not all there yet, or
 * (size_t)-1 with *alert for a bad header. */
static size_t whole_record(const struct tlsx_sess *s, size_t off, int *alert)
{
	size_t body;
	if (s->in_len - off < REC_HEADER)
		return 0;
	*alert = rec_check_header(s->in + off, &body);
	if (*alert)
		return (size_t)-1;
	return s->in_len - off >= REC_HEADER + body ? REC_HEADER + body : 0;
}

int tlsx_buffered(const struct tlsx_sess *s)
{
	int alert = 0;
	/* Plaintext not handed out yet, or a whole record (or a bad header, which
	 * tlsx_read turns into TLSX_FATAL) after the one opened at in[0]. */
	return s->plain_len > 0 || whole_record(s, s->rec_len, &alert) != 0;
}

/* One more record without application data: past TLSX_MAX_EMPTY_RECORDS in
 * a row, the alert to send. */
static int no_data(struct tlsx_sess *s)
{
	return ++s->empty_run > TLSX_MAX_EMPTY_RECORDS ? ALERT_UNEXPECTED_MESSAGE : 0;
}

int tlsx_open_record(struct tlsx_sess *s, uint8_t *rec, size_t rec_len, uint8_t **plain,
		     size_t *len, int *ev, int *request)
{
	uint8_t type = 0;
	*len = 0;
	*ev = 0;
	*request = -1;
	int alert = rec_open(&s->rd, rec, rec_len, &type, plain, len);
	if (alert)
		return alert;
	switch (type) {
	case CT_APPLICATION_DATA:
		if (*len == 0)
			return no_data(s); /* legal (5.1), and free to send by the thousand */
		s->empty_run = 0;
		return 0;
	case CT_ALERT: {
		if (*len != 2)
			return ALERT_DECODE_ERROR;
		s->alert = (*plain)[1];
		*ev = s->alert == ALERT_CLOSE_NOTIFY ? TLSX_CLOSE_NOTIFY : TLSX_PEER_ALERT;
		*len = 0;
		return 0;
	}
	case CT_HANDSHAKE:
		alert = rec_parse_key_update(*plain, *len, request);
		OPENSSL_cleanse(*plain, *len);
		*len = 0;
		if (alert || (alert = no_data(s)) != 0)
			return alert;
		if (rec_update(&s->rd) < 0)
			return ALERT_INTERNAL_ERROR;
		s->peer_updates++;
		/* update_requested: answer with our own KeyUpdate before any more data */
		if (*request == KU_REQUESTED)
			s->ku_owed = 1;
		*ev = TLSX_KEY_UPDATE;
		return 0;
	default:
		return ALERT_UNEXPECTED_MESSAGE;
	}
}

size_t tlsx_read(struct tlsx_sess *s, void *out, size_t cap, int *ev)
{
	for (;;) {
		if (s->plain_len > 0) {
			size_t k = s->plain_len < cap ? s->plain_len : cap;
			memcpy(out, s->plain, k);
			OPENSSL_cleanse(s->plain, k);
			s->plain += k;
			s->plain_len -= k;
			return k;
		}
		if (s->rec_len > 0) { /* the opened record is used up: drop it */
			memmove(s->in, s->in + s->rec_len, s->in_len - s->rec_len);
			s->in_len -= s->rec_len;
			s->rec_len = 0;
		}
		int alert = 0;
		size_t n = whole_record(s, 0, &alert);
		if (n == 0) {
			*ev = TLSX_WANT_READ;
			return 0;
		}
		if (n == (size_t)-1) {
			s->alert = alert;
			*ev = TLSX_FATAL;
			return 0;
		}
		int e, request;
		uint8_t *plain = NULL;
		size_t len = 0;
		alert = tlsx_open_record(s, s->in, n, &plain, &len, &e, &request);
		s->rec_len = n;
		if (alert) {
			s->alert = alert;
			*ev = TLSX_FATAL;
			return 0;
		}
		if (e == TLSX_CLOSE_NOTIFY || e == TLSX_PEER_ALERT) {
			*ev = e;
			return 0;
		}
		s->plain = plain;
		s->plain_len = len; /* 0 after a KeyUpdate: go round for the next record */
	}
}

static int seal(struct tlsx_sess *s, uint8_t type, const void *data, size_t len, uint8_t *out,
		size_t cap, size_t *used)
{
	size_t n;
	if (rec_seal(&s->wr, type, data, len, 0, out + *used, cap - *used, &n) < 0)
		return -1;
	*used += n;
	return 0;
}

static int key_update(struct tlsx_sess *s, uint8_t *out, size_t cap, size_t *used)
{
	uint8_t ku[5] = { HS_KEY_UPDATE, 0, 0, 1, KU_NOT_REQUESTED };
	if (seal(s, CT_HANDSHAKE, ku, sizeof ku, out, cap, used) < 0 || rec_update(&s->wr) < 0)
		return -1;
	s->ku_owed = 0;
	return 0;
}

int tlsx_seal_key_update(struct tlsx_sess *s, uint8_t *out, size_t cap, size_t *out_len)
{
	*out_len = 0;
	return key_update(s, out, cap, out_len);
}

size_t tlsx_seal_size(size_t len)
{
	size_t records = len / REC_MAX_PLAIN + 1;
	/* each record: header, content type, tag; and a KeyUpdate before each */
	return len + records * 2 * (REC_HEADER + 1 + REC_TAG + 4);
}

int tlsx_seal_data(struct tlsx_sess *s, const void *data, size_t len, uint8_t *out, size_t cap,
		   size_t *out_len, int *updates)
{
	const uint8_t *p = data;
	*out_len = 0;
	while (len > 0) {
		if (s->ku_owed || s->wr.seq + 1 >= s->limit) {
			if (key_update(s, out, cap, out_len) < 0)
				return -1;
			if (updates)
				++*updates;
		}
		size_t chunk = len < REC_MAX_PLAIN ? len : REC_MAX_PLAIN;
		if (seal(s, CT_APPLICATION_DATA, p, chunk, out, cap, out_len) < 0)
			return -1;
		p += chunk;
		len -= chunk;
	}
	return 0;
}

int tlsx_seal_alert(struct tlsx_sess *s, int alert, uint8_t *out, size_t cap, size_t *out_len)
{
	*out_len = 0;
	return tlsx_queue_alert(s, alert, out, cap, out_len);
}

int tlsx_queue_alert(struct tlsx_sess *s, int alert, uint8_t *out, size_t cap, size_t *len)
{
	/* In TLS 1.3 every alert but close_notify (and user_canceled) is fatal. */
	uint8_t a[2] = { alert == ALERT_CLOSE_NOTIFY ? 1 : 2, (uint8_t)alert };
	if (*len > cap) {
		errno = EINVAL;
		return -1;
	}
	return seal(s, CT_ALERT, a, sizeof a, out, cap, len);
}
