/*
 * dup_race.h - what the three files of stage 04 share: the dispatcher's
 * state, the messages between its processes, and who defines what.
 *
 *   dup_race.c  the lesson: accept, hand off (naive / article / fixed),
 *               the loop's reaction to a readable connection, the worker
 *   race.c      the machinery that forces the race: the processes, the hold
 *               pipe, the doorbell, the built-in client, --stress
 *   main.c      the command line, --serve, the result line and the table
 *   watchset.c  select, poll and epoll behind one interface
 */
#ifndef DUP_RACE_H
#define DUP_RACE_H

#include "../common/narrate.h"
#include "watchset.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum mode { NAIVE, ARTICLE, FIXED, ALL_MODES };
extern const char *const mode_names[]; /* "naive", "article", "fixed", NULL */

#define MAX_FDNUM 8192   /* descriptor numbers the parent keeps a record of */
#define MAX_TOLD 65536   /* connection ids whose stale events were narrated */
#define MAX_PENDING 16   /* accepted, not yet handed off (one per iteration) */

/* Tags of the watched descriptors that are not connections (those are >= 1). */
enum { TAG_LISTEN = -1, TAG_BELL = -2, TAG_CHAN = -3, TAG_SIG = -4 };

struct cfg {
	enum mode mode;
	enum poller poller;
	int child_dup;
	int connections;
	long stress;     /* 0 = forced rounds */
	int no_fd_clr;
	const char *checkpoint; /* --checkpoint PATH (the tests), or NULL */
};

struct stats {
	long connections, sent, delivered, stolen, stale, misdirected, growth;
	long robbed;     /* connections whose client was told fewer bytes than it sent */
};

/* Messages between the processes: fixed-size structs, so that a stream
 * socket or pipe hands each one over whole with a bounded read. */
struct report { /* worker -> parent, after each connection */
	int32_t conn;
	int32_t bytes;
};

struct note { /* client -> parent */
	int32_t kind; /* NOTE_SENT, NOTE_GOT, NOTE_SUMMARY */
	int32_t conn;
	int64_t a, b, c; /* SENT: a = bytes sent. GOT: a = bytes the worker said it got
			  * (-1: no reply). SUMMARY: a = bytes sent, b = connections
			  * robbed, c = of those, without any reply. */
};
enum { NOTE_SENT = 1, NOTE_GOT, NOTE_SUMMARY };

/* The parent: the dispatcher. */
struct parent {
	struct nar *n;
	const struct cfg *c;
	struct watchset w;
	int lfd, chan, hold_w, bell_r, bell_w, sfd;
	int forced;
	int owner[MAX_FDNUM];         /* connection id behind each of my numbers, 0 = none */
	int pend_fd[MAX_PENDING], pend_id[MAX_PENDING], npend;
	int dups[MAX_FDNUM], ndups;   /* article mode: duplicates I still hold */
	int next_id;
	unsigned char told[MAX_TOLD]; /* stale events narrated once per connection */
	struct stats st;
	int reports;                  /* --stress: reports received */
	char rbuf[sizeof(struct report) * 64];
	size_t rlen;
	int handed;                   /* handed off in the last iteration */
	int dropped;                  /* closed by the loop itself before the hand-off */
	int conn_events;              /* connection events in the last iteration */
	int stop;                     /* --serve: SIGTERM/SIGINT */
};

/* The children of a run, and the parent's ends of their pipes. */
struct kids {
	pid_t worker, client;
	int go_w, note_r;
};

/* An event for the --trace file only: the steps of the race-forcing harness
 * (go, queued, done) stay out of the --mermaid diagram, which shows the lesson. */
#define ev_harness(n, ...)                              \
	do {                                            \
		struct nar harness_ = *(n);             \
		harness_.seq_fd = -1;                   \
		ev(&harness_, __VA_ARGS__);             \
	} while (0)

/* dup_race.c: the lesson. */
int loop_once(struct parent *p, int timeout_ms, int accept_ok);
int worker(struct nar *n, const struct cfg *c, int chan, int hold_r);

/* race.c: the machinery. */
void set_owner(struct parent *p, int fd, int id);
int owner_of(const struct parent *p, int fd);
int first_time(struct parent *p, int id);
unsigned long inode_of(int fd);
void force_queued(struct parent *p, int fd);
void on_machinery(struct parent *p, int tag);
int wait_for_release(int hold_r, int chan);
void reply_and_close(struct nar *n, const struct cfg *c, int chan, int fd, int conn, long got);
void look(struct parent *p);
void release_worker(struct parent *p, int id);
void wait_report(struct parent *p);
int count_fds(void);
int high(int fd);
void setup(struct parent *p, struct nar *n, const struct cfg *c, int port, int with_client,
	   struct kids *k, int *bound);
int teardown(struct parent *p, struct kids *k);
int scenario(struct nar *n, const struct cfg *c, struct stats *out);

#endif
