/*
 * dispatcher.c - stage 06: the dispatcher's machinery around the lesson in
 * handoff_server.c: the queue of connections waiting for a worker, starting
 * and replacing workers (with a back-off when they fail), choosing the least
 * loaded one, the epoll loop with signals as events, and the drain on
 * SIGTERM.
 *
 * Run it: as part of ./handoff_server --serve (see handoff_server.c).
 * See also: signalfd(2), epoll(7), fork(2), socketpair(2), waitpid(2),
 * accept4(2) (EMFILE).
 */
#define _GNU_SOURCE
#include "../03-scm-rights/fdpass.h"
#include "../common/util.h"
#include "http.h"
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>

/* Blocks INT, TERM, CHLD and USR1 and returns a signalfd for them: signals
 * become events in the epoll loop instead of handlers racing the code. */
static int signals_as_events(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

/* Our copy of a connection is done with: the session state goes too. */
static void pend_drop_state(struct pend *p)
{
	if (p->state) {
		OPENSSL_cleanse(p->state, p->state_len);
		free(p->state);
	}
	p->state = NULL;
	p->state_len = 0;
}

void pend_close(struct pend *p)
{
	close(p->fd);
	pend_drop_state(p);
}


void print_counters(const struct disp *d)
{
	out_line("counters: accepted=%llu handed_off=%llu acked=%llu redispatched=%llu respawned=%llu "
		 "refused=%llu lost=%llu tls_failed=%llu tls_unexportable=%llu",
		 d->c.accepted, d->c.handed_off, d->c.acked, d->c.redispatched, d->c.respawned,
		 d->c.refused, d->c.lost, d->c.tls_failed, d->c.tls_unexportable);
}

struct pend *q_at(struct disp *d, unsigned i)
{
	return &d->q[(d->q_head + i) % d->q_cap];
}

void q_push_back(struct disp *d, struct pend p)
{
	*q_at(d, d->q_count++) = p;
}

void q_push_front(struct disp *d, struct pend p)
{
	d->q_head = (d->q_head + d->q_cap - 1) % d->q_cap;
	d->q[d->q_head] = p;
	d->q_count++;
}

struct pend q_pop(struct disp *d)
{
	struct pend p = d->q[d->q_head];
	d->q_head = (d->q_head + 1) % d->q_cap;
	d->q_count--;
	return p;
}

/* 503 and close: the clean refusal when the queue is at its bound. */
void refuse(struct disp *d, int fd)
{
	char msg[256];
	size_t len = http_error(msg, sizeof msg, 503);
	if (!d->cfg->tls) /* before a handshake a TLS client could not read it */
		(void)!send(fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	close(fd);
	d->c.refused++;
}

/* In a new child: close every descriptor that belongs to the dispatcher. A
 * worker that kept a copy of a queued or un-acknowledged connection would
 * keep it open after the real owner closed it (stage 01's lesson). */
void close_inherited(struct disp *d, int keep_slot)
{
	int own[] = { d->lfd, d->sfd, d->ep, d->reserve_fd, d->go_fd, d->done_fd };
	for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
		if (own[i] >= 0)
			close(own[i]);
	for (int s = 0; s < d->cfg->workers; s++) {
		struct slot *sl = &d->slots[s];
		if (sl->chan >= 0)
			close(sl->chan);
		for (unsigned i = 0; i < sl->un_count; i++) /* and wipe our copies' secrets */
			pend_close(&sl->un[(sl->un_head + i) % (unsigned)d->cfg->inflight_max]);
		if (sl->ulfd >= 0 && s != keep_slot)
			close(sl->ulfd);
	}
	for (unsigned i = 0; i < d->q_count; i++)
		pend_close(q_at(d, i));
	hs_forget(d);     /* the child has no business with these sessions */
	relays_forget(d);
}

/* Starts a worker for slot s: a SOCK_SEQPACKET socketpair, then fork; the
 * child keeps its end and nothing else of ours. 0: started; -1/errno (the
 * socketpair, the fork or the epoll registration failed; nothing is left
 * open, the slot stays empty). The dispatcher never exits for it: the
 * caller retries after a back-off and serves with the workers it has. */
static int spawn(struct disp *d, int s, int again, const char **failed)
{
	struct slot *sl = &d->slots[s];
	int sv[2];
	/* SOCK_SEQPACKET: message boundaries are kept, so a handoff and an ack
	 * are each exactly one recvmsg - no framing to get wrong. */
	*failed = "socketpair";
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	*failed = "fork";
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(sv[0]);
		close(sv[1]);
		errno = e;
		return -1;
	}
	if (pid == 0) {
		close(sv[0]);
		int ulfd = sl->ulfd;
		close_inherited(d, s);
		/* A replacement is another process: in narration and diagrams it
		 * is "new-worker-N", not the one that died. */
		static char role[32];
		snprintf(role, sizeof role, "%s%s", again ? "new-" : "", sl->role);
		d->n->role = role;
		if (again && d->cfg->respawn_fails) {
			say(d->n, "--respawn-fails: exiting before I am ready, as a broken worker would");
			_exit(EXIT_RUNTIME);
		}
		worker_exec(d->n, d->cfg, sv[1], ulfd, d->port); /* a fresh image: worker.c */
	}
	close(sv[1]);
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	*failed = "epoll_ctl";
	if (ep_add(d->ep, sv[0], EPOLLIN, tag(T_CHAN, (uint32_t)s)) < 0) {
		int e = errno;
		close(sv[0]); /* the worker reads EOF and exits; we reap it now */
		reap_child(pid, WAIT_MS, NULL);
		errno = e;
		return -1;
	}
	sl->pid = pid;
	sl->chan = sv[0];
	sl->alive = 1;
	sl->reaped = sl->ready = sl->blocked = sl->draining = 0;
	sl->un_head = sl->un_count = 0;
	sl->open = 0;
	if (!d->cfg->verbose && d->announced) /* the first line must be "listening on" */
		say(d->n, "%s is pid %d", sl->role, (int)pid);
	return 0;
}

/* The back-off of slot s: 100 ms, doubling up to 5 s. */
static void back_off(struct disp *d, int s)
{
	struct slot *sl = &d->slots[s];
	sl->backoff_ms = sl->backoff_ms ? sl->backoff_ms * 2 : 100;
	if (sl->backoff_ms > 5000)
		sl->backoff_ms = 5000;
	sl->respawn_at = now_ms() + sl->backoff_ms;
}

/* A replacement for slot s, now; if it cannot be started (out of
 * descriptors, of processes), say so and try again after a back-off. */
static void respawn(struct disp *d, int s)
{
	struct slot *sl = &d->slots[s];
	const char *failed;
	if (spawn(d, s, 1, &failed) == 0) {
		d->c.respawned++;
		return;
	}
	int e = errno;
	back_off(d, s);
	say(d->n, "cannot start a new %s (%s: %s (%s)); serving with the others, retrying in %d ms",
	    sl->role, failed, strerrorname_np(e), strerror(e), sl->backoff_ms);
}

int eligible(const struct disp *d, int s)
{
	const struct slot *sl = &d->slots[s];
	return sl->alive && !sl->blocked && !sl->draining &&
	       sl->un_count < (unsigned)d->cfg->inflight_max;
}

/* The least loaded worker (un-acknowledged + held), ties in rotation;
 * `avoid` only if nobody else can take it. -1: nobody can. */
int pick(struct disp *d, int avoid)
{
	int best = -1;
	long best_load = 0;
	int nw = d->cfg->workers;
	for (int i = 1; i <= nw; i++) {
		int s = (int)((d->rr + (unsigned)i) % (unsigned)nw);
		if (!eligible(d, s) || s == avoid)
			continue;
		long load = (long)d->slots[s].un_count + d->slots[s].open;
		if (best < 0 || load < best_load)
			best = s, best_load = load;
	}
	if (best < 0 && avoid >= 0 && eligible(d, avoid))
		best = avoid;
	if (best >= 0)
		d->rr = (unsigned)best;
	return best;
}

/* Waits for slot s's worker, whose channel is closed. A worker we asked to
 * finish closes its channel just before it exits: wait for it (reap_child
 * kills only after the bound). Any other EOF means it is broken: it may
 * have closed the channel and still run, so kill it first. */
void reap_worker(struct disp *d, int s)
{
	struct slot *sl = &d->slots[s];
	if (sl->reaped)
		return;
	if (!sl->draining)
		kill(sl->pid, SIGKILL);
	reap_child(sl->pid, WAIT_MS, NULL);
	sl->reaped = 1;
}

/* Slot s has lost its worker (handoff_server.c's worker_died): a new one
 * takes its place, at once if the old one had been serving, after a
 * back-off if it died before it was even ready. */
void replace_worker(struct disp *d, int s)
{
	struct slot *sl = &d->slots[s];
	if (!sl->ready) {
		/* It died before it was even ready: whatever killed it will kill the
		 * next one too (a broken build, a missing file). Respawning at once
		 * would turn a crash loop into a fork loop: back off, 100 ms
		 * doubling up to 5 s, and let the other workers carry the load. */
		back_off(d, s);
		say(d->n, "%s died before it was ready: respawning in %d ms, not at once", sl->role,
		    sl->backoff_ms);
		return;
	}
	/* Replace it first: the new worker records nothing until it is given
	 * work, so the story stays in one order; the re-dispatched descriptors
	 * still go to another worker (`avoid`). */
	sl->backoff_ms = 0;
	if (d->cfg->verbose) {
		say(d->n, "forking a new %s; the re-dispatch goes to a worker that was already running",
		    sl->role);
		char to[32];
		snprintf(to, sizeof to, "new-%s", sl->role);
		ev(d->n, "respawn", to, "slot=%d", s);
	}
	respawn(d, s);
}

/* Slots whose back-off has run out get their worker back. */
static void respawn_due(struct disp *d)
{
	long long now = now_ms();
	for (int s = 0; s < d->cfg->workers; s++) {
		struct slot *sl = &d->slots[s];
		if (sl->respawn_at && !sl->alive && !d->stopping && now >= sl->respawn_at) {
			sl->respawn_at = 0;
			respawn(d, s);
		}
	}
}

/* ---- the loop ----------------------------------------------------------- */

static void on_accept(struct disp *d)
{
	for (int k = 0; k < 512; k++) {
		/* SOCK_NONBLOCK here is for the worker: the flag travels with the open
		 * file, so the worker's epoll loop gets a non-blocking socket. */
		int fd = accept4(d->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				/* Out of descriptors: stop accepting for a tick, while acks
				 * free some (the listener would otherwise stay readable and
				 * the loop would spin). */
				epoll_ctl(d->ep, EPOLL_CTL_DEL, d->lfd, NULL);
				d->accept_paused = 1;
				d->pause_until = now_ms() + TICK_MS;
			}
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return;
		}
		d->c.accepted++;
		if (d->cfg->verbose) {
			say(d->n, "accept() -> fd %d (connection #%llu); it never enters my epoll set: I must not read "
				  "what belongs to a worker",
			    fd, (unsigned long long)d->next_id + 1);
			ev(d->n, "accept", NULL, "id=%llu", (unsigned long long)d->next_id + 1);
		}
		switch (d->cfg->model) {
		case M_HANDOFF:
			accept_handoff(d, fd); /* handoff_server.c */
			break;
		case M_FORK:
			fork_serve(d, fd);
			break;
		case M_PROXY:
			relay_start(d, fd);
			break;
		default:
			close(fd);
		}
	}
}

static void on_signal(struct disp *d)
{
	struct signalfd_siginfo si;
	while (read(d->sfd, &si, sizeof si) == sizeof si) {
		if (si.ssi_signo == SIGUSR1) {
			print_counters(d);
		} else if (si.ssi_signo == SIGCHLD) {
			int st;
			pid_t pid;
			while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
				if (pid == d->client_pid) {
					d->client_status = st;
					d->client_pid = 0;
					continue;
				}
				reap_kid(d, pid);
				for (int s = 0; s < d->cfg->workers; s++)
					if (d->slots[s].alive && d->slots[s].pid == pid) {
						char why[64];
						if (WIFSIGNALED(st))
							snprintf(why, sizeof why, "SIGCHLD: killed by signal %d",
								 WTERMSIG(st));
						else
							snprintf(why, sizeof why, "SIGCHLD: exit %d",
								 WEXITSTATUS(st));
						d->slots[s].reaped = 1;
						worker_died(d, s, why);
					}
			}
		} else if (!d->stopping) {
			d->stopping = 1;
			d->stop_deadline = now_ms() + DRAIN_MS + WAIT_MS;
			say(d->n, "%s: no new connections; the workers finish what they hold",
			    strsignal((int)si.ssi_signo));
		}
	}
}

static void stop_accepting(struct disp *d)
{
	if (d->lfd < 0)
		return;
	if (!d->accept_paused)
		epoll_ctl(d->ep, EPOLL_CTL_DEL, d->lfd, NULL);
	close(d->lfd);
	d->lfd = -1;
}

/* Stopping: once nothing is queued, un-acknowledged or relayed, tell each
 * worker "no more" (shutdown SHUT_WR: it reads EOF, drains, exits). */
static int stop_step(struct disp *d)
{
	stop_accepting(d);
	/* Proxy: the workers are told at once; their draining closes the
	 * upstream side of every relay, which then closes its client. */
	/* --tls: handshakes under way finish (or time out) and are handed off */
	int alive = d->nrelays, pending = d->q_count > 0 || d->nhs > 0;
	for (int s = 0; s < d->cfg->workers; s++)
		pending |= d->slots[s].alive && d->slots[s].un_count > 0;
	if (pending && d->q_count > 0) {
		int can = 0;
		for (int s = 0; s < d->cfg->workers; s++)
			can |= d->slots[s].alive && !d->slots[s].draining;
		if (!can) /* nobody left to give them to */
			while (d->q_count > 0) {
				struct pend p = q_pop(d);
				pend_close(&p);
				d->c.lost++;
			}
	}
	for (int s = 0; s < d->cfg->workers; s++) {
		struct slot *sl = &d->slots[s];
		if (!sl->alive)
			continue;
		alive++;
		if (!pending && !sl->draining) {
			shutdown(sl->chan, SHUT_WR);
			sl->draining = 1;
		}
	}
	if (d->cfg->model == M_FORK && d->nkids > 0 && !pending) {
		if (!d->kids_told)
			for (int i = 0; i < d->nkids; i++)
				kill(d->kids[i], SIGTERM); /* each finishes its connection, then exits */
		d->kids_told = 1;
		alive += d->nkids;
	}
	return alive == 0;
}

void dispatcher_loop(struct disp *d)
{
	struct epoll_event evs[256];
	for (;;) {
		if (d->stopping) {
			if (stop_step(d))
				break;
			if (now_ms() >= d->stop_deadline) {
				say(d->n, "the drain bound ran out: killing what is left");
				for (int s = 0; s < d->cfg->workers; s++)
					if (d->slots[s].alive) {
						d->slots[s].reaped = 0;
						worker_died(d, s, "shutdown bound");
					}
				for (int i = 0; i < d->nkids; i++)
					reap_child(d->kids[i], 0, NULL);
				d->nkids = 0;
				for (int fd = 0; d->rtab && fd < d->rtabcap; fd++)
					if (d->rtab[fd])
						relay_free(d, d->rtab[fd]);
				hs_sweep(d, 1);
				stop_step(d);
				break;
			}
		}
		int k = epoll_wait(d->ep, evs, 256, TICK_MS);
		if (k < 0 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < k; i++) {
			uint32_t kind = (uint32_t)(evs[i].data.u64 >> 32), idx = (uint32_t)evs[i].data.u64;
			if (kind == T_LISTEN && d->lfd >= 0)
				on_accept(d);
			else if (kind == T_SIGNAL)
				on_signal(d);
			else if (kind == T_DONE) { /* demo: the client closed its pipe */
				epoll_ctl(d->ep, EPOLL_CTL_DEL, d->done_fd, NULL);
				d->stopping = 1;
				d->stop_deadline = now_ms() + DRAIN_MS + WAIT_MS;
			} else if (kind == T_CHAN && d->slots[idx].alive) {
				struct slot *sl = &d->slots[idx];
				if ((evs[i].events & EPOLLOUT) && sl->blocked) {
					sl->blocked = 0;
					ep_mod(d->ep, sl->chan, EPOLLIN, tag(T_CHAN, idx));
				}
				if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && chan_read(d, (int)idx) < 0)
					worker_died(d, (int)idx, "channel EOF");
			} else if (kind == T_HS && d->htab && d->htab[idx]) {
				hs_step(d, d->htab[idx]);
			} else if (kind == T_CONN && d->rtab && d->rtab[idx]) {
				relay_pump(d, d->rtab[idx]);
			}
		}
		respawn_due(d);
		if (d->nhs > 0)
			hs_sweep(d, 0);
		if (d->cfg->model == M_HANDOFF)
			dispatch(d);
		if (d->accept_paused && d->lfd >= 0 && !d->stopping && now_ms() >= d->pause_until) {
			d->accept_paused = 0;
			ep_add(d->ep, d->lfd, EPOLLIN, tag(T_LISTEN, 0));
		}
	}
}

/* A worker closed its channel before it said it was ready: its exit
 * status is the news (not an errno, which nothing set). Exits 1. */
static _Noreturn void start_failed(struct disp *d, int s)
{
	struct slot *sl = &d->slots[s];
	int st = 0;
	reap_child(sl->pid, WAIT_MS, &st);
	if (WIFSIGNALED(st))
		fprintf(stderr, "handoff_server: %s exited before it was ready: killed by signal %d (%s)\n",
			sl->role, WTERMSIG(st), strsignal(WTERMSIG(st)));
	else
		fprintf(stderr, "handoff_server: %s exited before it was ready: exit status %d\n",
			sl->role, WEXITSTATUS(st));
	exit(EXIT_RUNTIME);
}

/* Starts the workers (and waits until each says it is ready). */
void start_workers(struct disp *d)
{
	for (int s = 0; s < d->cfg->workers; s++) {
		struct slot *sl = &d->slots[s];
		snprintf(sl->role, sizeof sl->role, "worker-%d", s);
		sl->chan = sl->ulfd = -1;
		sl->un = calloc((size_t)d->cfg->inflight_max, sizeof *sl->un);
		if (!sl->un)
			die("calloc");
		if (d->cfg->model == M_PROXY) {
			/* The worker's own listener, on an autobound abstract Unix address
			 * (bind with only the family): we connect to it per client. We
			 * keep it, so a respawned worker accepts what its predecessor's
			 * backlog still holds. */
			sl->ulfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			struct sockaddr_un a = { .sun_family = AF_UNIX };
			sl->ualen = sizeof sl->uaddr;
			if (sl->ulfd < 0 || bind(sl->ulfd, (struct sockaddr *)&a, sizeof(sa_family_t)) < 0 ||
			    listen(sl->ulfd, SOMAXCONN) < 0 ||
			    getsockname(sl->ulfd, (struct sockaddr *)&sl->uaddr, &sl->ualen) < 0)
				die("proxy: Unix listener for %s", sl->role);
		}
	}
	const char *failed;
	for (int s = 0; s < d->cfg->workers; s++)
		if (spawn(d, s, 0, &failed) < 0) {
			/* The workers already started go first: each reads end-of-file
			 * on its channel and exits, and is reaped (never an orphan). */
			int e = errno;
			for (int t = 0; t < s; t++) {
				close(d->slots[t].chan);
				reap_child(d->slots[t].pid, WAIT_MS, NULL);
			}
			errno = e;
			die("starting %s: %s", d->slots[s].role, failed);
		}
	for (int s = 0; s < d->cfg->workers; s++) {
		struct slot *sl = &d->slots[s];
		long long until = now_ms() + WAIT_MS;
		while (sl->alive && !sl->ready) {
			int r = wait_readable(sl->chan, (int)(until - now_ms()));
			if (r < 0)
				die("waiting for %s to start (poll)", sl->role);
			if (r == 0 || now_ms() >= until) {
				errno = ETIMEDOUT;
				die("%s did not say it was ready within %d ms", sl->role, WAIT_MS);
			}
			if (chan_read(d, s) < 0)
				start_failed(d, s);
		}
	}
}

void disp_free(struct disp *d)
{
	for (int s = 0; s < MAX_WORKERS; s++) {
		free(d->slots[s].un);
		if (d->slots[s].ulfd >= 0)
			close(d->slots[s].ulfd);
	}
	free(d->q);
	free(d->kids);
	free(d->rtab);
	if (d->htab && d->nhs > 0)
		hs_sweep(d, 1);
	free(d->htab);
	if (d->reserve_fd >= 0)
		close(d->reserve_fd);
	close(d->sfd);
	close(d->ep);
}

void disp_init(struct disp *d, struct nar *n, const struct config *cfg, int port)
{
	*d = (struct disp){ .n = n, .cfg = cfg, .lfd = -1, .reserve_fd = -1, .go_fd = -1, .done_fd = -1 };
	for (int s = 0; s < MAX_WORKERS; s++)
		d->slots[s].chan = d->slots[s].ulfd = -1;
	d->sfd = signals_as_events();
	d->ep = epoll_create1(EPOLL_CLOEXEC);
	if (d->sfd < 0 || d->ep < 0)
		die("signalfd/epoll_create1");
	ep_add(d->ep, d->sfd, EPOLLIN, tag(T_SIGNAL, 0));
	d->q_cap = (unsigned)(cfg->queue_max + cfg->workers * cfg->inflight_max);
	d->q = calloc(d->q_cap, sizeof *d->q);
	d->rr = (unsigned)cfg->workers - 1; /* pick() starts after rr: worker-0 comes first */
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	if (cfg->model == M_FORK)
		d->kids = calloc(MAX_KIDS, sizeof *d->kids);
	if (cfg->model == M_PROXY) {
		d->rtabcap = (int)(rl.rlim_cur < 1u << 20 ? rl.rlim_cur : 1u << 20);
		d->rtab = calloc((size_t)d->rtabcap, sizeof *d->rtab);
	}
	if (cfg->tls) {
		d->htabcap = (int)(rl.rlim_cur < 1u << 20 ? rl.rlim_cur : 1u << 20);
		d->htab = calloc((size_t)d->htabcap, sizeof *d->htab);
	}
	if (!d->q || (cfg->model == M_FORK && !d->kids) || (cfg->model == M_PROXY && !d->rtab) ||
	    (cfg->tls && !d->htab))
		die("calloc");

	if (cfg->model == M_REUSEPORT) {
		/* Each worker listens on its own socket. We only bind one (never
		 * listen on it) to learn the port and to hold it while workers come
		 * and go: a bound, non-listening socket gets no connections. */
		d->reserve_fd = listen_loopback_opts(port, &d->port,
						     LOOPBACK_REUSEPORT | LOOPBACK_NO_LISTEN);
		if (d->reserve_fd < 0)
			die("socket/SO_REUSEPORT/bind on 127.0.0.1:%d", port);
	} else {
		d->lfd = listen_loopback(port, &d->port);
		if (d->lfd < 0)
			die("socket/bind/listen on 127.0.0.1:%d", port);
		fcntl(d->lfd, F_SETFL, O_NONBLOCK); /* accept until EAGAIN */
	}
}

int serve(struct nar *n, const struct config *cfg, int port)
{
	struct disp d;
	disp_init(&d, n, cfg, port);
	if (cfg->model != M_FORK)
		start_workers(&d);
	if (d.lfd >= 0)
		ep_add(d.ep, d.lfd, EPOLLIN, tag(T_LISTEN, 0));
	announce_listening(d.port);
	d.announced = 1;
	if (cfg->model == M_FORK)
		say(n, "model fork-per-conn: one child per connection");
	else
		say(n, "model %s, %d worker(s)", model_names[cfg->model], cfg->workers);
	for (int s = 0; cfg->model != M_FORK && s < cfg->workers; s++)
		say(n, "%s is pid %d", d.slots[s].role, (int)d.slots[s].pid);
	if (cfg->ktls == KTLS_AUTO && cfg->ktls_on)
		say(n, "kernel TLS: available here (%s); the workers install each session in the kernel",
		    cfg->ktls_why);
	else if (cfg->ktls == KTLS_AUTO)
		say(n, "kernel TLS: not available here (%s); the workers use their own record layer",
		    cfg->ktls_why);
	else if (cfg->ktls == KTLS_FORCE)
		say(n, "kernel TLS: forced; the workers install each session in the kernel");
	dispatcher_loop(&d);
	say(n, "all workers have exited; bye");
	print_counters(&d);
	disp_free(&d);
	return EXIT_LESSON;
}

