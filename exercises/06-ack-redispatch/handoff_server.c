/*
 * handoff_server.c - EXERCISE (stage 06): the ack, and the re-dispatch when
 * a worker dies before it.
 *
 * This is 06-prefork-server/handoff_server.c with two lesson cores taken
 * out, steps 3 and 4 below: write them where the TODOs are
 * (exercises/06-ack-redispatch/README.md has the task and the hints), then
 * `make exercise-06` builds stage 06 with this file and runs its tests.
 * Everything outside the TODOs is the stage's own code.
 *
 * The stage's lesson, in the order a connection lives it:
 *
 *   the wire      one SOCK_SEQPACKET message per handoff or ack (struct wire)
 *   1. accept     accept_handoff(): the dispatcher accept()s and queues the
 *                 descriptor; it never adds it to its epoll set: it must not
 *                 read a byte that belongs to a worker (stage 04)
 *   2. dispatch   dispatch(): sendmsg with SCM_RIGHTS, an id per descriptor,
 *                 up to 253 in one message (SCM_MAX_FD); the dispatcher KEEPS
 *                 its copy
 *      receive    worker_chan(): the worker takes the descriptors, then acks
 *   3. ack        chan_read(): only on the ack does the dispatcher close its
 *                 copy
 *   4. death      worker_died(): a worker that dies before its ack (channel
 *                 EOF, SIGCHLD, or EPIPE on send) loses nothing: the copies go
 *                 back to the front of the queue, to another worker
 * Also: back-pressure (--inflight-max, --queue-max) and worker replacement
 * live in dispatcher.c, the HTTP worker in worker.c, the other models in
 * models.c, --tls in tls_dispatch.c; the demo in demo.c.
 * Run it:    ./handoff_server            the narrated demo (a crash before the ack)
 *            ./handoff_server --serve [--port N] [--workers N] [--model M] [--tls]
 *            curl http://127.0.0.1:PORT/   ->   served by worker <pid>
 * Break it:  --die-before-ack N (the worker given the N-th connection dies
 *            before its ack); --respawn-fails.
 * Article: the product's pre-forked design, and the promised "why not fork
 * per connection" - answered with numbers in README.md.
 * See also: unix(7) (SCM_RIGHTS, SOCK_SEQPACKET), sendmsg(2) (MSG_NOSIGNAL),
 * recvmsg(2) (MSG_CMSG_CLOEXEC), epoll(7), waitpid(2).
 */
#define _GNU_SOURCE
#include "../03-scm-rights/fdpass.h"
#include "../common/util.h"
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

struct wire_entry {
	uint64_t id;    /* the dispatcher's number for the connection */
	uint32_t flags; /* ENTRY_CRASH */
	uint32_t state_len; /* --tls: bytes of its session state, which follow the entries */
};
struct wire { /* one SOCK_SEQPACKET message: no framing to get wrong */
	uint32_t type;  /* MSG_HANDOFF, MSG_ACK, MSG_DONE, MSG_READY */
	uint32_t count; /* HANDOFF/ACK: entries (= descriptors attached); DONE: closed */
	struct wire_entry e[FDPASS_MAX_FDS];
};
#define WIRE_LEN(n) (offsetof(struct wire, e) + (size_t)(n) * sizeof(struct wire_entry))
#define WIRE_CAP (sizeof(struct wire) + FDPASS_MAX_FDS * TLS_STATE_MAX)
union wire_buf { /* a handoff at its largest: every entry with a session state */
	struct wire m;
	uint8_t b[WIRE_CAP];
};

/* Sends the worker's one-word messages (READY, DONE) and its acks: blocking,
 * MSG_NOSIGNAL: if the dispatcher is gone the worker learns it from EOF. */
static void send_msg(int chan, const struct wire *m, size_t len)
{
	ssize_t r;
	do
		r = send(chan, m, len, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
}

void chan_tell(int chan, uint32_t type, uint32_t count)
{
	struct wire m = { .type = type, .count = count };
	send_msg(chan, &m, WIRE_LEN(0));
}

/* Step 1. Takes over fd, a connection accept4() just returned: it is queued
 * (or, with --tls, its handshake starts) and the dispatcher never reads it. */
void accept_handoff(struct disp *d, int fd)
{
	if (d->q_count >= (unsigned)d->cfg->queue_max) {
		refuse(d, fd); /* 503: a bounded queue, not an unbounded one */
		return;
	}
	struct pend p = {
		.id = d->next_id + 1,
		.fd = fd,
		.avoid = -1,
		.flags = d->c.accepted == (unsigned long long)d->cfg->die_at ? ENTRY_CRASH : 0,
	};
	if (d->cfg->tls) { /* queued when its handshake is done (tls_dispatch.c) */
		hs_start(d, p);
		return;
	}
	d->next_id++;
	q_push_back(d, p);
}

/* The demo's narration of one handoff message. */
static void narrate_handoff(struct disp *d, const struct slot *sl, const struct wire *m,
			    const int *fds)
{
	for (unsigned i = 0; i < m->count; i++) {
		unsigned long long id = (unsigned long long)m->e[i].id;
		say(d->n, "sendmsg(fd %d, connection #%llu) to %s; I keep my copy until it "
			  "acknowledges", fds[i], id, sl->role);
		ev(d->n, "handoff", sl->role, "id=%llu", id);
	}
}

/* Step 2. Hands off what is queued, several at once in one message when
 * they wait. The dispatcher keeps every descriptor it sends (in the slot's
 * un-acknowledged ring) until step 3. */
void dispatch(struct disp *d)
{
	static union wire_buf buf; /* large: not on the stack */
	struct wire *m = &buf.m;
	int fds[FDPASS_MAX_FDS];
	unsigned cap = (unsigned)d->cfg->inflight_max;
	while (d->q_count > 0) {
		int avoid = q_at(d, 0)->avoid;
		int s = pick(d, avoid);
		if (s < 0)
			return; /* everyone is full or busy: keep them queued */
		struct slot *sl = &d->slots[s];
		unsigned live = 0;
		for (int i = 0; i < d->cfg->workers; i++)
			live += eligible(d, i);
		unsigned n = (d->q_count + live - 1) / live; /* spread a burst over the workers */
		if (n > FDPASS_MAX_FDS)
			n = FDPASS_MAX_FDS;
		if (n > cap - sl->un_count)
			n = cap - sl->un_count;
		unsigned k = 0;
		while (k < n && k < d->q_count && q_at(d, k)->avoid == avoid) {
			struct pend *p = q_at(d, k);
			m->e[k] = (struct wire_entry){ .id = p->id, .flags = p->flags,
						       .state_len = p->state_len };
			fds[k++] = p->fd;
		}
		size_t len = WIRE_LEN(k);
		for (unsigned i = 0; i < k; i++) { /* --tls: the states after the entries */
			struct pend *p = q_at(d, i);
			if (p->state_len)
				memcpy(buf.b + len, p->state, p->state_len);
			len += p->state_len;
		}
		m->type = MSG_HANDOFF;
		m->count = k;
		if (d->cfg->verbose)
			narrate_handoff(d, sl, m, fds);
		int st = fdpass_send(sl->chan, &buf, len, fds, k, NULL);
		OPENSSL_cleanse(buf.b + WIRE_LEN(k), len - WIRE_LEN(k));
		if (st == FDPASS_OK) {
			for (unsigned i = 0; i < k; i++) { /* sent, and still ours: into the ring */
				sl->un[(sl->un_head + sl->un_count) % cap] = q_pop(d);
				sl->un_count++;
			}
			d->c.handed_off += k;
			continue;
		}
		int full = st == FDPASS_ESYS && (errno == ENOBUFS || errno == ETOOMANYREFS);
		if (st == FDPASS_EAGAIN || full) {
			/* The channel is full: this worker is behind. Nothing more for it
			 * until it drains (EPOLLOUT). */
			sl->blocked = 1;
			ep_mod(d->ep, sl->chan, EPOLLIN | EPOLLOUT, tag(T_CHAN, (uint32_t)s));
			continue;
		}
		if (st == FDPASS_ESYS && (errno == EPIPE || errno == ECONNRESET)) {
			/* MSG_NOSIGNAL made a dead worker an EPIPE instead of a SIGPIPE. */
			worker_died(d, s, "sendmsg: EPIPE");
			continue;
		}
		die("sendmsg to %s (%s)", sl->role, fdpass_strerror(st));
	}
}

/* Step 3. Reads everything worker s has sent: READY, DONE (connections it
 * closed) and acks. An ack closes the dispatcher's copies of the ids it
 * names; from then on the worker alone owns them. 0: the worker is still
 * alive; -1: it is gone (EOF, reset, or a message that breaks the protocol). */
int chan_read(struct disp *d, int s)
{
	struct slot *sl = &d->slots[s];
	struct wire m;
	unsigned cap = (unsigned)d->cfg->inflight_max;
	for (;;) {
		struct fdpass_rx rx = { .buf = &m, .cap = sizeof m };
		int st = fdpass_recv(sl->chan, &rx); /* max_fds 0: a worker never sends one */
		if (st == FDPASS_EAGAIN)
			return 0;
		if (st != FDPASS_OK || rx.len < WIRE_LEN(0) || (rx.msg_flags & MSG_TRUNC))
			return -1;
		if (m.type == MSG_READY) {
			sl->ready = 1;
		} else if (m.type == MSG_DONE) {
			sl->open = sl->open > (long)m.count ? sl->open - (long)m.count : 0;
		} else if (m.type == MSG_ACK && rx.len == WIRE_LEN(m.count)) {
			for (unsigned i = 0; i < m.count; i++) {
				/* The connection this entry should acknowledge. */
				struct pend *p = &sl->un[sl->un_head];
				/* TODO(handoff_ack): entry i (m.e[i].id) acknowledges one
				 * connection that worker s was sent and has not acknowledged
				 * yet (sl's ring: sl->un_count of them from sl->un_head).
				 * A worker that acknowledges anything else is broken: return
				 * -1 (the caller treats it as dead). Then the dispatcher's
				 * copy of that connection is redundant: close it
				 * (pend_close, server.h). The lines below take it out of
				 * the ring. Until you write it, the dispatcher stops here:
				 * exit 1, with a message. */
				die("%s acknowledged connection #%llu: handoff_ack is not written yet",
				    sl->role, (unsigned long long)m.e[i].id);
				if (d->cfg->verbose) {
					say(d->n, "%s acknowledged connection #%llu: close(fd %d), my copy; "
						  "I never watched it, and now I do not hold it either",
					    sl->role, (unsigned long long)p->id, p->fd);
					ev(d->n, "close_copy", NULL, "id=%llu", (unsigned long long)p->id);
					char go = (char)('0' + s); /* demo: tell the client whom to talk to */
					(void)!write(d->go_fd, &go, 1);
				}
				sl->un_head = (sl->un_head + 1) % cap;
				sl->un_count--;
				sl->open++;
				d->c.acked++;
			}
		} else {
			return -1;
		}
	}
}

/* Step 4. Worker s is gone. Its channel and its process go; every
 * descriptor it had not acknowledged - our copies are still open - goes back
 * to the front of the queue, marked to go to someone else; what it had
 * acknowledged is lost with it (counted). Then a new worker takes the slot. */
void worker_died(struct disp *d, int s, const char *why)
{
	struct slot *sl = &d->slots[s];
	if (!sl->alive)
		return;
	chan_read(d, s); /* acknowledgements it sent before dying still count */
	sl->alive = 0;
	epoll_ctl(d->ep, EPOLL_CTL_DEL, sl->chan, NULL);
	close(sl->chan);
	sl->chan = -1;
	reap_worker(d, s); /* killed first unless we asked it to finish */
	unsigned cap = (unsigned)d->cfg->inflight_max;
	unsigned k = sl->un_count;
	d->c.lost += (unsigned long long)sl->open;
	if (sl->draining && k == 0) {
		/* We asked it to finish (shutdown): a normal exit, not a death. */
		if (d->cfg->verbose)
			say(d->n, "%s has finished and exited; reaped", sl->role);
		sl->open = 0;
		return;
	}
	if (d->cfg->verbose) {
		say(d->n, "%s died (%s) holding %u descriptor(s) it never acknowledged; my copies are "
			  "still open, so the clients lose nothing",
		    sl->role, why, k);
		ev(d->n, "worker_died", NULL, "unacked=%u", k);
	} else if (!d->stopping || k || sl->open) {
		say(d->n, "%s (pid %d) died (%s): %u un-acknowledged to re-dispatch, %ld acknowledged "
			  "connection(s) lost with it",
		    sl->role, (int)sl->pid, why, k, sl->open);
	}
	sl->open = 0;
	/* TODO(handoff_redispatch): the k connections worker s was sent and
	 * never acknowledged are still open here (sl's ring: k of them from
	 * sl->un_head, cap slots). Give every one of them back to the queue
	 * (q_push_front, server.h), so they are dispatched again before what
	 * came later, in the order they were sent; marked to go to another
	 * worker than s (its .avoid), and without ENTRY_CRASH in .flags
	 * (--die-before-ack fires once). Then the ring is empty, and
	 * d->c.redispatched counts them. Until you write it, the dispatcher
	 * stops here: exit 1, with a message. */
	(void)cap;
	die("%s died holding %u connection(s): handoff_redispatch is not written yet", sl->role,
	    k);
	if (!d->stopping)
		replace_worker(d, s);
}

/* The worker's side of steps 2 and 3: one message from the dispatcher, with
 * descriptors to serve. Each becomes a connection of this worker (conn_add
 * takes it over); then one ack names them all, and the dispatcher may close
 * its copies. A message it cannot trust ends the worker: the dispatcher still
 * holds every descriptor in it and gives them to another worker. */
void worker_chan(struct worker *w)
{
	static union wire_buf buf; /* large: not on the stack */
	struct wire *m = &buf.m;
	int fds[FDPASS_MAX_FDS];
	struct fdpass_rx rx = { .buf = &buf, .cap = sizeof buf, .fds = fds,
				.max_fds = FDPASS_MAX_FDS };
	/* fdpass_recv receives with MSG_CMSG_CLOEXEC: were a worker ever to exec
	 * a helper, no client connection would leak into it. */
	int st = fdpass_recv(w->chan, &rx);
	if (st == FDPASS_EOF) {
		worker_start_drain(w, "the dispatcher closed the channel");
		return;
	}
	/* Every entry's state length is checked before any state is looked at:
	 * with --tls each has one, of at most TLS_STATE_MAX bytes; without, none. */
	size_t states = 0;
	int bad = st != FDPASS_OK || (rx.msg_flags & MSG_TRUNC) || rx.len < WIRE_LEN(0) ||
		  m->type != MSG_HANDOFF || m->count != rx.nfds || rx.len < WIRE_LEN(m->count);
	for (size_t i = 0; !bad && i < m->count; i++) {
		uint32_t sl = m->e[i].state_len;
		bad = w->cfg->tls ? sl == 0 || sl > TLS_STATE_MAX : sl != 0;
		states += sl;
	}
	if (bad || rx.len != WIRE_LEN(m->count) + states) {
		OPENSSL_cleanse(&buf, rx.len < sizeof buf ? rx.len : sizeof buf);
		/* Nothing we can trust in it: close what came (fdpass already did on
		 * its own rejections) and stop. The dispatcher still holds every
		 * descriptor we did not acknowledge and gives them to someone else. */
		for (size_t i = 0; i < rx.nfds; i++)
			close(fds[i]);
		say(w->n, "bad message on the channel (%s); exiting", fdpass_strerror(st));
		exit(EXIT_RUNTIME);
	}
	const uint8_t *state = buf.b + WIRE_LEN(m->count);
	for (size_t i = 0; i < rx.nfds; i++) {
		unsigned long long id = (unsigned long long)m->e[i].id;
		if (w->cfg->verbose) {
			say(w->n, "recvmsg -> fd %d (connection #%llu), close-on-exec; watching it "
				  "with epoll", fds[i], id);
			ev(w->n, "recv", NULL, "id=%llu", id);
		}
		if (m->e[i].flags & ENTRY_CRASH) {
			say(w->n, "--die-before-ack: dying now, holding fd %d that I never "
				  "acknowledged", fds[i]);
			ev(w->n, "crash", NULL, "id=%llu", id);
			raise(SIGKILL); /* as abrupt as a crash gets: no cleanup at all */
		}
		/* With --tls the session state comes in the same message as the
		 * descriptor: it cannot arrive without it, or with another's. */
		if (conn_add(w, fds[i], w->cfg->tls ? state : NULL, m->e[i].state_len) == -2)
			say(w->n, "connection #%llu: a session state I cannot decode; closed", id);
		state += m->e[i].state_len;
	}
	/* the secrets are in the sessions now, and nowhere else in this process */
	OPENSSL_cleanse(buf.b + WIRE_LEN(m->count), states);
	if (w->cfg->verbose) {
		say(w->n, "acknowledging %u descriptor(s): until now the dispatcher's copy was "
			  "what kept the connection safe if I died", m->count);
		ev(w->n, "ack", "dispatcher", "count=%u", m->count);
	}
	m->type = MSG_ACK; /* the same ids, in the same order */
	send_msg(w->chan, m, WIRE_LEN(m->count));
}
