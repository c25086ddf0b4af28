/*
 * tls_export.h - the reusable halves of stage 05's after-handshake handoff:
 * what the process that runs the handshake needs (a server context, the
 * capture of traffic secrets and record sequence numbers, the fail-closed
 * checks, the export into struct handoff_state), and what the process that
 * takes the session over needs (a TLS 1.3 session driven by buffers, on top
 * of record.h). Stage 05's ssl_handoff and stage 06's handoff_server --tls
 * both use it.
 *
 * The exporting side:
 *   ctx = tlsx_server_ctx(...);            keylog + msg callbacks installed
 *   struct tlsx_capture *c = calloc(..);  SSL_set_app_data(ssl, c);
 *   SSL_accept(ssl) ...                    the callbacks fill *c
 *   why = tlsx_cannot_export(ssl, c, &code);   NULL: exact state available
 *   tlsx_export(ssl, c, st);               suite, secrets, sequence numbers
 *   tlsx_capture_wipe(c); SSL_set_quiet_shutdown(ssl, 1); SSL_free(ssl);
 *
 * The taking-over side (no I/O here; the caller reads and writes the socket):
 *   tlsx_sess_init(s, st)                  st is wiped
 *   tlsx_in_room(s, &p) / tlsx_in_added(s, n)   raw bytes from the socket in
 *   tlsx_read(s, buf, cap, &ev)            plaintext out; 0 and an event when
 *                                          none: more bytes needed, the peer's
 *                                          close_notify or alert, or a fatal
 *                                          error (the alert to send: s->alert)
 *   tlsx_buffered(s)                       1: tlsx_read has work without a
 *                                          read from the socket (a record
 *                                          behind the one in hand)
 *   tlsx_seal_data / tlsx_queue_alert      records out into a caller's buffer
 *                                          (in order, whole: the order rule below)
 *   tlsx_sess_free(s)                      secrets and keys wiped
 * A KeyUpdate from the peer is handled inside tlsx_read (read key moves on;
 * update_requested makes the next tlsx_seal_data send our own KeyUpdate
 * first, RFC 8446 4.6.3); so is our own KeyUpdate at the write key's limit.
 *
 * Nothing here prints or logs a secret; nothing exits.
 * See also: SSL_CTX_set_keylog_callback(3), SSL_CTX_set_msg_callback(3),
 * SSL_CTX_set_read_ahead(3), SSL_has_pending(3), RFC 8446.
 */
#ifndef TLS_EXPORT_H
#define TLS_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "handoff_state.h"
#include "record.h"

/* ---- the exporting side ------------------------------------------------- */

/*
 * What the handshaking process learns about a session while OpenSSL runs it,
 * through the two callbacks OpenSSL 3.0 offers (it has no getter for either):
 *   keylog  the application traffic secrets, CLIENT_/SERVER_TRAFFIC_SECRET_0;
 *   msg     one SSL3_RT_HEADER call per record read or written: counting
 *           them from the Finished message on gives the sequence numbers.
 * Attach one per connection with SSL_set_app_data(ssl, capture).
 */
struct tlsx_capture {
	uint8_t client_secret[REC_MAX_SECRET], server_secret[REC_MAX_SECRET];
	size_t client_len, server_len;
	uint64_t rd_records, wr_records; /* records since the Finished in each direction */
	int tickets;                     /* NewSessionTicket messages written */
	int key_updates;                 /* KeyUpdate messages seen either way */
};

void tlsx_capture_wipe(struct tlsx_capture *c);

/* A P-256 key and a self-signed certificate for localhost / 127.0.0.1, made
 * with the EVP and X509 APIs: no files. 0, or -1 (OpenSSL's error queue says why). */
int tlsx_make_identity(EVP_PKEY **pkey, X509 **cert);

struct tlsx_ctx_opts {
	const char *suites;     /* TLS 1.3 suites (OpenSSL syntax) or NULL */
	int tickets;            /* session tickets to send */
	int read_ahead;         /* 1 only to break the handoff on purpose */
	const char *cert_file, *key_file; /* PEM files, or NULL: use cert/pkey */
};

/* A TLS 1.3-only server context with the capture callbacks and read-ahead
 * off (OpenSSL then reads a record and not one byte more, so nothing raw is
 * stranded in its buffer at handoff). NULL on failure, *failed naming the
 * step ("SSL_CTX_set_ciphersuites" means the list was refused). */
SSL_CTX *tlsx_server_ctx(const struct tlsx_ctx_opts *o, EVP_PKEY *pkey, X509 *cert,
			 const char **failed);

/* Why the session cannot be exported exactly (and a one-word code for a
 * trace), or NULL if it can. Fail closed on anything else. */
const char *tlsx_cannot_export(SSL *ssl, const struct tlsx_capture *c, const char **code);

/* Fills st (suite, both directions' secrets and next sequence numbers;
 * pending_len 0) from a session tlsx_cannot_export accepted. */
void tlsx_export(SSL *ssl, const struct tlsx_capture *c, struct handoff_state *st);

/* ---- the taking-over side ----------------------------------------------- */

#define TLSX_IN_CAP (2 * (REC_HEADER + REC_MAX_CIPHER))

enum tlsx_event {
	TLSX_WANT_READ = 1,   /* no whole record buffered: read more raw bytes */
	TLSX_CLOSE_NOTIFY,    /* the peer closed its side cleanly */
	TLSX_PEER_ALERT,      /* the peer sent a fatal alert (ev->alert) */
	TLSX_FATAL,           /* a bad record: send ev->alert, then close */
	TLSX_KEY_UPDATE,      /* tlsx_open_record only: a KeyUpdate was handled */
};

/* Records in a row that carry no application data (KeyUpdates, empty
 * application_data records) before the peer is cut off with
 * unexpected_message: each costs us work and moves nothing forward, so a
 * flood of them would pin a worker. 32, like OpenSSL's MAX_EMPTY_RECORDS and
 * BoringSSL's kMaxKeyUpdates. */
#define TLSX_MAX_EMPTY_RECORDS 32

struct tlsx_sess {
	struct rec_dir rd, wr;
	uint64_t limit;         /* records per write key before our own KeyUpdate */
	int ku_owed;            /* the peer asked for a KeyUpdate: send one first */
	uint64_t peer_updates;  /* KeyUpdates received */
	int alert;              /* TLSX_PEER_ALERT / TLSX_FATAL: the alert */
	int empty_run;          /* records in a row without application data */
	/* raw bytes: a record is opened in place at in[0] */
	size_t in_len;
	size_t rec_len;         /* > 0: in[0..rec_len) is an opened record */
	uint8_t *plain;         /* its plaintext not yet handed out */
	size_t plain_len;
	uint8_t in[TLSX_IN_CAP];
};

/* Sets up both directions from st and wipes st. rekey_after: our own
 * KeyUpdate after that many records under one key (0: the suite's limit).
 * -1/errno. */
int tlsx_sess_init(struct tlsx_sess *s, struct handoff_state *st, uint64_t rekey_after);
void tlsx_sess_free(struct tlsx_sess *s);

/* Where raw bytes from the socket go, and how many fit. */
size_t tlsx_in_room(struct tlsx_sess *s, uint8_t **p);
void tlsx_in_added(struct tlsx_sess *s, size_t n);
/* 1 if tlsx_read has work to do without a read from the socket: plaintext
 * not handed out yet, or a whole record (or a bad header) buffered behind
 * the one being handed out. A worker that stops reading while its output is
 * full asks this before it waits for EPOLLIN: bytes already in the buffer
 * will not raise EPOLLIN again. A partial record is not counted. */
int tlsx_buffered(const struct tlsx_sess *s);

/* Up to cap bytes of plaintext into out: > 0, or 0 with *ev set. */
size_t tlsx_read(struct tlsx_sess *s, void *out, size_t cap, int *ev);

/* Opens one whole record (header + body, in place) and classifies it:
 * 0 with *plain and *len for application data (a KeyUpdate or an alert is
 * handled and reported in *ev as in tlsx_read, *len 0), or the alert to send
 * (unexpected_message also for the record after TLSX_MAX_EMPTY_RECORDS in a
 * row without application data).
 * For callers that read whole records themselves (stage 05's blocking worker).
 * *request: a KeyUpdate's request value (-1 if the record was no KeyUpdate). */
int tlsx_open_record(struct tlsx_sess *s, uint8_t *rec, size_t rec_len, uint8_t **plain,
		     size_t *len, int *ev, int *request);

/* Records carrying len bytes of application data into out (a KeyUpdate
 * first if one is owed or the write key is at its limit). out needs
 * tlsx_seal_size(len) bytes. 0 and *out_len, or -1/errno. *updates (may be
 * NULL) is incremented per KeyUpdate sent. */
size_t tlsx_seal_size(size_t len);
int tlsx_seal_data(struct tlsx_sess *s, const void *data, size_t len, uint8_t *out, size_t cap,
		   size_t *out_len, int *updates);
/*
 * The order rule for everything sealed: records must reach the socket whole
 * and in the order they were sealed (each one's sequence number is in its
 * nonce, and the peer opens them in that order only). A caller that keeps a
 * queue of sealed bytes (out[off..len) still to send) has a partial record
 * pending whenever off < len; an alert written to the socket then, on its
 * own, lands inside that record or ahead of records with smaller sequence
 * numbers, and the peer sees bad_record_mac instead of the alert. So:
 *   - never send an alert (or any record) past bytes still queued: append it
 *     behind them (tlsx_queue_alert) and send the queue in order;
 *   - if the queue cannot be flushed (the peer does not read), close without
 *     the alert: a peer that reads nothing would not see it anyway.
 * tlsx_seal_alert writes into an empty buffer: use it only when nothing
 * sealed is still unsent.
 */

/* One alert record (close_notify is a warning, every other alert fatal)
 * into out[0..cap): 0 and *out_len, or -1/errno (EMSGSIZE: no room). */
int tlsx_seal_alert(struct tlsx_sess *s, int alert, uint8_t *out, size_t cap, size_t *out_len);
/* The same alert appended behind the *len bytes already queued in out[0..cap)
 * (sent or not): 0 and *len grown by the record, or -1/errno (EMSGSIZE: no
 * room behind them, EINVAL: *len > cap; *len unchanged). */
int tlsx_queue_alert(struct tlsx_sess *s, int alert, uint8_t *out, size_t cap, size_t *len);
/* Our own KeyUpdate (update_not_requested), then the new write key. */
int tlsx_seal_key_update(struct tlsx_sess *s, uint8_t *out, size_t cap, size_t *out_len);

#endif
