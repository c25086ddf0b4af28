/*
 * server.h - what the files of stage 06 share: the configuration, the
 * dispatcher's state (its workers, its queue, its counters), the worker's
 * entry point, and the few epoll helpers every loop uses.
 *
 * The lesson is in handoff_server.c (accept, dispatch, ack, re-dispatch on
 * a worker's death, and the worker's receive-and-ack). The rest is
 * machinery: dispatcher.c (queue, spawn, the loop, drain), worker.c (the
 * worker's connections and HTTP I/O), models.c (fork-per-conn, proxy),
 * tls_dispatch.c (the non-blocking handshakes of --tls), demo.c, main.c.
 *
 * See also: epoll(7), signalfd(2), unix(7).
 */
#ifndef SERVER_H
#define SERVER_H

#include "../05-ssl/handoff_state.h"
#include "../common/cli.h"
#include "../common/narrate.h"

#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>

#include <openssl/ssl.h>

#define MAX_WORKERS 64
#define MAX_KIDS 4096     /* fork-per-conn: children alive at once */
#define DRAIN_MS 5000     /* SIGTERM: how long workers may finish what they hold */
#define RELAY_BUF 16384   /* proxy: bytes in flight per direction */
#define TICK_MS 100       /* how often idle deadlines are checked */
/* --tls: an encoded session state without pending plaintext (the dispatcher
 * never reads application data). */
#define TLS_STATE_MAX (HS_MAX_ENCODED - HS_MAX_PENDING)

enum model { M_HANDOFF, M_FORK, M_REUSEPORT, M_PROXY };
extern const char *const model_names[];
enum { KTLS_OFF, KTLS_AUTO, KTLS_FORCE }; /* --ktls, in the order of ktls_names */
extern const char *const ktls_names[];

struct config {
	int model, workers, die_at, header_ms, inflight_max, queue_max;
	int respawn_fails; /* --respawn-fails */
	int verbose; /* the demo: narrate every connection */
	int tls, handshake_ms; /* --tls, --handshake-timeout */
	int handshakes_max;    /* --tls: handshakes in flight at once */
	int read_ahead;        /* --read-ahead */
	int ktls;              /* --ktls: KTLS_OFF, KTLS_AUTO or KTLS_FORCE */
	int ktls_on;           /* the workers install each session in the kernel */
	char ktls_why[200];    /* what the probe at start found, in one line */
	SSL_CTX *ctx;          /* --tls: the dispatcher's server context */
};

/* The channel's message types (handoff_server.c defines the messages). */
enum { MSG_HANDOFF = 1, MSG_ACK, MSG_DONE, MSG_READY };
enum { ENTRY_CRASH = 1 }; /* --die-before-ack: die on this one, before the ack */

/* ---- the dispatcher's state --------------------------------------------- */

struct pend { /* a connection the dispatcher holds a copy of */
	uint64_t id;
	int fd;
	int avoid;      /* re-dispatched: the slot whose worker died holding it */
	uint32_t flags; /* ENTRY_CRASH */
	uint32_t state_len; /* --tls: the encoded session state, kept with our */
	uint8_t *state;     /* copy of the descriptor until the ack, then wiped */
};

struct slot {
	char role[24];  /* "worker-0": names the worker in narration and diagrams */
	pid_t pid;
	int chan;       /* our end of the channel, non-blocking; -1 when dead */
	int alive, reaped, ready, blocked, draining;
	long long respawn_at; /* a back-off is running: fork a new worker then */
	int backoff_ms;
	struct pend *un; /* handed off, not yet acknowledged: a FIFO ring */
	unsigned un_head, un_count;
	long open;      /* acknowledged and not yet reported closed (proxy: relays) */
	int ulfd;       /* proxy: the worker's Unix listener, which we keep */
	struct sockaddr_un uaddr;
	socklen_t ualen;
};

struct counters {
	unsigned long long accepted, handed_off, acked, redispatched, respawned, refused, lost;
	unsigned long long tls_failed;       /* --tls: handshakes that failed or timed out */
	unsigned long long tls_unexportable; /* --tls: sessions not exportable exactly: closed */
};

struct disp {
	struct nar *n;
	const struct config *cfg;
	int ep, lfd, sfd, port, reserve_fd;
	int accept_paused, stopping, announced;
	long long stop_deadline, pause_until;
	struct slot slots[MAX_WORKERS];
	struct pend *q; /* waiting for a worker: a deque (re-dispatch goes in front) */
	unsigned q_head, q_count, q_cap;
	uint64_t next_id;
	unsigned rr;
	struct counters c;
	pid_t *kids;     /* fork-per-conn */
	int nkids, kids_told;
	struct relay **rtab; /* proxy: indexed by descriptor */
	int rtabcap, nrelays;
	struct hs **htab; /* --tls: handshakes in progress, indexed by descriptor */
	int htabcap, nhs;
	uint64_t hs_started; /* --tls: handshakes started, for their age */
	/* the demo */
	pid_t client_pid;
	int go_fd, done_fd, client_status;
};

/* epoll tags: what kind of descriptor woke us, and which one. */
enum { T_LISTEN = 1, T_SIGNAL, T_CHAN, T_CONN, T_DONE, T_HS };
static inline uint64_t tag(uint32_t kind, uint32_t idx)
{
	return (uint64_t)kind << 32 | idx;
}

static inline long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int ep_add(int ep, int fd, uint32_t events, uint64_t t)
{
	struct epoll_event e = { .events = events, .data.u64 = t };
	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

static inline int ep_mod(int ep, int fd, uint32_t events, uint64_t t)
{
	struct epoll_event e = { .events = events, .data.u64 = t };
	return epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
}

/* ---- handoff_server.c: the lesson --------------------------------------- */
void accept_handoff(struct disp *d, int fd);
void dispatch(struct disp *d);
int chan_read(struct disp *d, int s);
void worker_died(struct disp *d, int s, const char *why);
struct worker;
void worker_chan(struct worker *w);
void chan_tell(int chan, uint32_t type, uint32_t count);

/* ---- dispatcher.c ------------------------------------------------------- */
struct pend *q_at(struct disp *d, unsigned i);
void q_push_back(struct disp *d, struct pend p);
void q_push_front(struct disp *d, struct pend p);
struct pend q_pop(struct disp *d);
void pend_close(struct pend *p);
void refuse(struct disp *d, int fd);
void close_inherited(struct disp *d, int keep_slot);
int pick(struct disp *d, int avoid);
int eligible(const struct disp *d, int s);
void reap_worker(struct disp *d, int s);
void replace_worker(struct disp *d, int s);
void print_counters(const struct disp *d);
void dispatcher_loop(struct disp *d);
void start_workers(struct disp *d);
void disp_init(struct disp *d, struct nar *n, const struct config *cfg, int port);
void disp_free(struct disp *d);
int serve(struct nar *n, const struct config *cfg, int port);

/* ---- worker.c ----------------------------------------------------------- */
/* The worker's side of the lesson calls these: */
struct worker {
	struct nar *n;
	const struct config *cfg;
	int ep, chan, lfd, sfd;
	struct conn **tab; /* indexed by descriptor number */
	int tabcap;
	int open;          /* connections held */
	unsigned done;     /* closed since the last MSG_DONE */
	int draining;
	long long drain_until;
	int once;          /* fork-per-conn: exit when the connection is done */
	pid_t pid;
};
int conn_add(struct worker *w, int fd, const uint8_t *state, size_t len);
void worker_start_drain(struct worker *w, const char *why);
_Noreturn void worker_main(struct nar *n, const struct config *cfg, int chan, int lfd, int conn,
			   int port);
_Noreturn void worker_exec(struct nar *n, const struct config *cfg, int chan, int lfd, int port);
_Noreturn void worker_exec_main(int argc, char **argv);

/* ---- models.c ----------------------------------------------------------- */
void relay_start(struct disp *d, int cfd);
void relay_pump(struct disp *d, struct relay *r);
void relay_free(struct disp *d, struct relay *r);
void relays_forget(struct disp *d); /* in a new child: close the relays' descriptors */
void fork_serve(struct disp *d, int fd);
void reap_kid(struct disp *d, pid_t pid);

/* ---- tls_dispatch.c ----------------------------------------------------- */
void hs_start(struct disp *d, struct pend p);
void hs_step(struct disp *d, struct hs *h);
void hs_sweep(struct disp *d, int all);
void hs_forget(struct disp *d); /* in a new child: close and wipe the handshakes */

/* ---- demo.c ------------------------------------------------------------- */
int demo(struct nar *n, struct config *cfg);

#endif
