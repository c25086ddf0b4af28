/*
 * hot_restart.h - stage 07: one server generation, and the upgrade that
 * replaces it by the next without refusing, resetting or dropping a client.
 *
 * A generation is one process: a poll(2) loop that accepts HTTP/1.1
 * connections and answers each GET with "served by generation G pid P".
 * SIGHUP asks it to upgrade: it fork()s and exec()s its own binary
 * (/proc/self/exe) as generation G+1, and the two meet on an abstract Unix
 * socket (the "upgrade channel"). What happens next is the --strategy:
 * hot_restart.c holds the handoff (the lesson), strategies.c the naive ways.
 *
 * See also: unix(7) (SCM_RIGHTS, SO_PEERCRED, abstract sockets),
 * socket(7) (SO_REUSEPORT), signalfd(2), execve(2), proc(5) (/proc/self/exe).
 */
#ifndef HOT_RESTART_H
#define HOT_RESTART_H

#include "../common/narrate.h"

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

enum strategy { ST_HANDOFF, ST_STOP_START, ST_REUSEPORT, ST_REUSEPORT_MIGRATE };
extern const char *const strategy_names[]; /* "handoff", ... NULL */

enum fail_upgrade { FAIL_NONE, FAIL_EXEC, FAIL_CRASH };

/* --hold POINT, a test hook: where a generation stops until a line arrives
 * on stdin, so a test can act in that gap without guessing at timing. */
enum hold_point { HOLD_NONE, HOLD_CONNECT, HOLD_READY, HOLD_BIND, HOLD_CLOSE };
extern const char *const hold_names[]; /* "none", "before-connect", ... NULL */

/* The most connections one generation holds; a few more are refused. */
#define MAX_CONNS 512
/* The upgrade channel's messages, small and fixed: "LISTEN 8080", "READY",
 * "CONN 3", "ACK 3", "DONE". */
#define MSG_MAX 64

struct conn {
	int fd;                  /* -1: slot free */
	int id;                  /* the demo client's label ('K', ...), from GET /K; 0 if none */
	size_t len;              /* request bytes read but not yet answered */
	int served;              /* requests answered on it so far */
	char buf[8192];          /* HTTP_REQ_MAX (../06-prefork-server/http.h) */
};

enum upgrade_state {
	UP_NONE,      /* serving; SIGHUP starts an upgrade */
	UP_CONNECT,   /* forked the next generation; waiting for it to connect */
	UP_READY,     /* it is connected (and has the listener): waiting for READY */
	UP_DRAINING,  /* it is serving; we hand over or finish our connections */
	UP_TAKING,    /* (the new side) the old one is still handing us connections */
};

struct gen {
	struct nar n;
	enum strategy strategy;
	int generation;          /* 1, 2, 3, ... */
	int port;
	int lfd;                 /* the listening socket, -1 when we hold none */
	int accepting;           /* 1: lfd is in our poll set */
	char role[16];           /* "gen1", "gen2", ...: who speaks in the narration */
	int sigfd;               /* signalfd: SIGHUP, SIGTERM, SIGINT, SIGCHLD */
	int spare;               /* accept_shedding()'s spare descriptor */
	struct conn *conns;      /* MAX_CONNS slots */
	size_t nconns;

	/* the upgrade */
	enum upgrade_state up;
	int up_listen;           /* old side: the abstract socket the new one connects to */
	int chan;                /* the upgrade channel (either side), -1 when none */
	pid_t child;             /* old side: the next generation's pid */
	pid_t old_pid;           /* new side: the generation we take over from */
	long long deadline_ms;   /* bound on the current upgrade step */
	int handed;              /* connections handed over so far */

	/* options */
	const char *pid_file;
	enum fail_upgrade fail;  /* --fail-upgrade: break the next upgrade */
	enum hold_point hold;    /* --hold POINT */
	int verbose;             /* narrate every request (the demo) */
	int notify_fd;           /* demo only: short status lines for the demo client */
	const char *self;        /* argv[0], for the narration */
	int stop;                /* SIGTERM seen */
};

/* ---- hot_restart.c: the lesson ------------------------------------------ */

/* Old side: the peer on the upgrade channel must be our uid and the pid we forked.
 * 0 if it is, -1/EPERM (or the getsockopt errno) if not; the caller closes. */
int check_upgrade_peer(int chan, pid_t expect_pid);
/* Old side, on accepting the next generation: sends the listening socket
 * (handoff), or just the port (the naive strategies). We keep our copy. */
int hand_over_listener(struct gen *g);
/* New side: connects to the old generation, checks it, and receives the
 * listener (handoff) or binds its own (the naive strategies). 0 or -1/errno. */
int take_over(struct gen *g);
/* Old side, READY received: stop accepting, then hand over every idle
 * connection; busy ones follow one by one as they finish (hand_over_conn). */
int old_stops_accepting(struct gen *g);
/* Old side: passes one idle connection (no byte buffered here) to the new
 * generation and closes our copy once it acknowledged. 0 or -1/errno. */
int hand_over_conns(struct gen *g, const size_t *slots, size_t count);
/* New side: one message from the old generation (connections or DONE). */
int receive_from_old(struct gen *g);

/* ---- server.c: the generation's loop ------------------------------------ */

int gen_serve(struct gen *g);                 /* returns the exit code */
int start_upgrade(struct gen *g);             /* SIGHUP: fork + exec the next generation */
int conn_add(struct gen *g, int fd, int id);  /* slot index, or -1 (fd closed) */
void conn_close(struct gen *g, size_t slot);
long long now_ms(void);
int write_pid_file(const struct gen *g);
void notify(const struct gen *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void hold_here(const struct gen *g, enum hold_point here);
int send_msg(int chan, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int recv_msg(int chan, char *buf, size_t cap, int timeout_ms);
/* The old generation's abstract upgrade address; returns its length. */
socklen_t upgrade_addr(struct sockaddr_un *sa, pid_t old_pid);

/* ---- strategies.c: binding and the naive upgrades ----------------------- */

/* The listener of generation 1, or of a naive strategy's new generation:
 * 127.0.0.1:port, with SO_REUSEPORT for the reuseport strategies. */
int bind_listener(enum strategy s, int port, int *bound);
/* Old side, naive strategies, READY received: what each does. */
int naive_old_on_ready(struct gen *g);
/* stop-start: the old closes its listener before it starts the new one. */
void naive_before_fork(struct gen *g);

#endif
