/*
 * ssl05.h - what the files of stage 05 share: options, the line protocol,
 * the worker pool, and the functions each file offers the others.
 *
 * ssl_handoff.c holds the lesson (the three hand-offs); the other files are
 * machinery named for what they do:
 *   lines.c          the line protocol (a reply per line), error reasons, timeouts
 *   worker_record.c  the worker's TLS 1.3 record loop on libcrypto (record.c)
 *   worker_ktls.c    the worker's kernel-TLS branch
 *   pool.c           pre-forked workers, their channels, the worker's receive loop
 *   demo.c           the narrated demo and its built-in client
 *   dispatch.c       the parent's connections: the --serve loop, deadlines
 *   main.c           options, main()
 *
 * See also: ssl_handoff.c, record.h, handoff_state.h, tls_export.h, ktls.h.
 */
#ifndef SSL05_H
#define SSL05_H

#include "../common/narrate.h"
#include "../common/util.h"
#include "handoff_state.h"
#include "record.h"
#include "tls_export.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

#define MAX_WORKERS 16
#define MAX_ROUTES 16
#define LINE_CAP REC_MAX_PLAIN
#define IDLE_MS (WAIT_MS * 3) /* a silent client is dropped after this */

enum mode { MODE_NAIVE, MODE_BEFORE, MODE_AFTER, MODE_ALL };
extern const char *const mode_names[];
enum { KTLS_AUTO, KTLS_OFF, KTLS_FORCE };

/* Messages on the parent <-> worker channel (one SOCK_SEQPACKET message each). */
enum { MSG_NAIVE = 'N', MSG_BEFORE = 'B', MSG_AFTER = 'A', MSG_DONE = 'D' };

struct opts {
	int mode;
	int workers;
	int ktls;
	int ktls_ok;            /* the kernel offers the tls ULP (checked at start) */
	char ulps[256];         /* what it offers instead (for the message) */
	const char *suites;     /* --ciphersuites */
	int tickets;
	const char *cert, *key;
	int bad_seq;
	int read_ahead;
	uint64_t rekey_after;   /* 0: the AEAD limit of the suite */
	int go_fd;              /* demo only: tells the client "your turn" (-1 otherwise) */
	int route_by_sni;       /* before-handshake: peek at the ClientHello first */
	int nroutes;
	struct route {
		const char *name; /* a server_name, compared without case */
		int worker;       /* 0-based worker index */
	} routes[MAX_ROUTES];
};

/* ---- lines.c: the line protocol and small helpers ----------------------- */

/* A line buffer: bytes in, whole lines out. A line longer than the buffer
 * is answered in pieces rather than refused. */
struct lines {
	char buf[LINE_CAP];
	size_t len;
};

void go(const struct opts *o);
_Noreturn void die_ssl(const char *what);
const char *ssl_reason(char *buf, size_t cap);
void set_timeouts(int fd, int ms);
int set_nonblocking(int fd, int on);
ssize_t read_exact(int fd, uint8_t *buf, size_t len, int ms);
size_t make_reply(char *out, size_t cap, const char *role, const char *line, size_t len);
size_t next_line(struct lines *l, char *out);
SSL_CTX *server_ctx(const struct opts *o, EVP_PKEY *pkey, X509 *cert);
int ssl_serve_lines(const struct nar *n, const struct opts *o, SSL *ssl, struct lines *l);
void ssl_serve_lines_blocking(const struct nar *n, const struct opts *o, SSL *ssl, struct lines *l);

/* ---- worker_record.c: the worker's own record layer --------------------- */

/* after-handshake: the session arrives as state; libcrypto carries it on. */
struct tls13 {
	const struct nar *n;
	const struct opts *o;
	int conn;
	struct tlsx_sess sess; /* both directions' keys and sequence numbers (tls_export.h) */
	uint8_t rec[REC_HEADER + REC_MAX_CIPHER]; /* a record read, opened in place */
	uint8_t out[REC_HEADER + REC_MAX_CIPHER]; /* a record sealed: never rec, whose
						     plaintext may still be in use */
	struct lines l;
};

/* Answers what t->l holds, then serves records until the connection is over
 * (sending a fatal alert where one is due). t->conn stays open. */
void worker_record_loop(struct tls13 *t);

/* ---- worker_ktls.c ------------------------------------------------------ */

/* Tries to install the session in the kernel and serve through it: 1 when
 * the connection is over (served, or closed because the install failed after
 * TCP_ULP was attached), 0 if TCP_ULP was refused and the socket is untouched
 * (use the record loop). t->conn stays the caller's. */
int worker_ktls(struct tls13 *t);

/* ---- pool.c: the pre-forked workers ------------------------------------- */

struct pool {
	int n;
	pid_t pid[MAX_WORKERS];
	int chan[MAX_WORKERS]; /* our end of each worker's SOCK_SEQPACKET channel */
	int busy[MAX_WORKERS]; /* connections handed over and not yet reported done */
	int next;              /* round-robin: the worker after the last one picked */
};

void start_workers(struct nar *n, const struct opts *o, SSL_CTX *ctx, struct pool *p, int lfd, int sfd);
void stop_workers(struct pool *p);
int pick_worker(const struct pool *p);
int hand_over(const struct nar *n, struct pool *p, int w, int conn, const void *msg, size_t len);
int read_done(struct pool *p, int i);

/* ---- ssl_handoff.c: the lesson ------------------------------------------ */

/* A connection the parent is handshaking, and what the export needs. */
struct pconn {
	int fd;
	SSL *ssl;                 /* owns nothing of fd: SSL_free leaves it open */
	struct tlsx_capture *c;   /* secrets and record counts, filled by callbacks */
	struct lines *l;          /* plaintext read so far */
	char line[LINE_CAP + 1];  /* the first line, once it is complete */
	size_t line_len;
};

void worker_naive(const struct nar *n, const struct opts *o, int conn);
void worker_before(const struct nar *n, const struct opts *o, SSL_CTX *ctx, int conn);
void take_over(const struct nar *n, const struct opts *o, int conn, struct handoff_state *st);
enum { STEP_WAIT, STEP_DONE, STEP_SERVE };
int parent_step(const struct nar *n, const struct opts *o, struct pool *p, struct pconn *pc);
void hand_off_before(const struct nar *n, struct pool *p, int w, int conn);

/* ---- dispatch.c: the parent's connections ----------------------------------- */

void pconn_free(struct pconn *pc);
void parent_handle(struct nar *n, const struct opts *o, SSL_CTX *ctx, struct pool *p, int conn);
int serve(struct nar *n, struct opts *o, SSL_CTX *ctx, int port);

/* ---- demo.c ------------------------------------------------------------- */

void say_ktls(const struct nar *n, const struct opts *o);
int demo(struct nar *n, struct opts *o, SSL_CTX *ctx, X509 *cert, int mode);

#endif
