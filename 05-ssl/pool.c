/*
 * pool.c - stage 05's pre-forked workers: one SOCK_SEQPACKET channel each,
 * the worker's loop that receives a descriptor (and, after the handshake,
 * the session state in the same message), and the parent's bookkeeping.
 *
 * Used by demo.c and main.c; the lesson (what each message kind means) is in
 * ssl_handoff.c. Run ./ssl_handoff --mermaid to see the forks and hand-offs.
 * See also: unix(7) SOCK_SEQPACKET and SCM_RIGHTS, fdpass.h (stage 03).
 */
#define _GNU_SOURCE
#include "../03-scm-rights/fdpass.h"
#include "../common/cli.h"
#include "ssl05.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

/* ---- the worker --------------------------------------------------------- */

/* Receives connections until the parent closes the channel; each one is
 * served by the kind of its message, closed, and reported done. */
static void worker_main(struct nar *n, const struct opts *o, SSL_CTX *ctx, int chan, int index)
{
	uint8_t *msg = malloc(1 + HS_MAX_ENCODED + 1);
	struct handoff_state *st = malloc(sizeof *st);
	if (!msg || !st)
		_exit(EXIT_RUNTIME);
	for (;;) {
		int fd = -1;
		struct fdpass_rx rx = { .buf = msg, .cap = 1 + HS_MAX_ENCODED + 1, .fds = &fd, .max_fds = 1,
					.flags = FDPASS_NEED_FD };
		int s = fdpass_recv(chan, &rx);
		if (s == FDPASS_EOF)
			break; /* the parent is done with us */
		if (s != FDPASS_OK) {
			say(n, "a bad message from the parent: %s", fdpass_strerror(s));
			if (s == FDPASS_ESYS && errno != EINTR)
				break;
			continue;
		}
		set_timeouts(fd, IDLE_MS);
		/* what came with the descriptor, in words (the diagrams show it) */
		const char *with = rx.len == 0 ? "nothing" : msg[0] == MSG_NAIVE ? "no_session"
				 : msg[0] == MSG_BEFORE ? "no_handshake_yet"
				 : msg[0] == MSG_AFTER ? "tls_state" : "unknown";
		ev(n, "received", NULL, "worker=%d fd=%d with=%s", index, fd, with);
		if (rx.len == 1 && msg[0] == MSG_NAIVE) {
			worker_naive(n, o, fd);
		} else if (rx.len == 1 && msg[0] == MSG_BEFORE) {
			worker_before(n, o, ctx, fd);
		} else if (rx.len > 1 && msg[0] == MSG_AFTER && hs_decode(st, msg + 1, rx.len - 1) == 0) {
			OPENSSL_cleanse(msg, rx.len);
			take_over(n, o, fd, st);
		} else {
			say(n, "a message I cannot decode (%zu bytes): closing fd %d", rx.len, fd);
		}
		OPENSSL_cleanse(msg, rx.len);
		close(fd);
		uint8_t done = MSG_DONE;
		if (send(chan, &done, 1, MSG_NOSIGNAL) < 0)
			break;
	}
	free(st);
	free(msg);
}

/* ---- the parent --------------------------------------------------------- */

/* Forks o->workers workers, each with its own channel; the child closes
 * what is not its own (lfd, sfd, the channels of earlier workers). */
void start_workers(struct nar *n, const struct opts *o, SSL_CTX *ctx, struct pool *p,
		   int lfd, int sfd)
{
	for (int i = 0; i < o->workers; i++) {
		int sv[2];
		/* SEQPACKET: message boundaries kept, so the descriptor and the state
		 * arrive together as one message, never split or merged. */
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
			die("socketpair");
		ev(n, "fork", "worker", "index=%d", i);
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			n->role = "worker";
			for (int k = 0; k < i; k++)
				close(p->chan[k]);
			close(sv[0]);
			close(lfd);
			if (sfd >= 0)
				close(sfd);
			unblock_signals();
			worker_main(n, o, ctx, sv[1], i);
			close(sv[1]);
			if (o->go_fd >= 0)
				close(o->go_fd);
			nar_close(n);
			SSL_CTX_free(ctx);
			_exit(0);
		}
		close(sv[1]);
		p->pid[i] = pid;
		p->chan[i] = sv[0];
		p->busy[i] = 0;
		p->n = i + 1;
	}
	say(n, "pre-forked %d worker%s; each has a SOCK_SEQPACKET channel to me", p->n, p->n == 1 ? "" : "s");
}

/* Closes every channel (EOF: each worker finishes and exits), then reaps
 * the workers, each wait bounded. */
void stop_workers(struct pool *p)
{
	for (int i = 0; i < p->n; i++)
		if (p->chan[i] >= 0) {
			close(p->chan[i]); /* EOF: the worker finishes and exits */
			p->chan[i] = -1;
		}
	for (int i = 0; i < p->n; i++)
		if (p->pid[i] > 0 && reap_child(p->pid[i], WAIT_MS, NULL) == 0)
			p->pid[i] = 0;
}

/* The least busy live worker, or -1. */
int pick_worker(const struct pool *p)
{
	int best = -1;
	for (int i = 0; i < p->n; i++)
		if (p->chan[i] >= 0 && (best < 0 || p->busy[i] < p->busy[best]))
			best = i;
	return best;
}

/* Hands conn to worker w with msg attached; closes our copy either way. */
int hand_over(const struct nar *n, struct pool *p, int w, int conn, const void *msg, size_t len)
{
	int s = fdpass_send(p->chan[w], msg, len, &conn, 1, NULL);
	if (s != FDPASS_OK)
		say(n, "sendmsg to worker %d: %s", w, fdpass_strerror(s));
	else
		p->busy[w]++;
	close(conn); /* the message in flight holds its own reference */
	return s == FDPASS_OK ? 0 : -1;
}

/* Reads 'done' reports from a worker channel; -1 when the worker is gone. */
int read_done(struct pool *p, int i)
{
	uint8_t b;
	ssize_t r = recv(p->chan[i], &b, 1, MSG_DONTWAIT);
	if (r == 1) {
		if (p->busy[i] > 0)
			p->busy[i]--;
		return 0;
	}
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	close(p->chan[i]);
	p->chan[i] = -1;
	return -1;
}
