/*
 * models.c - stage 06: the designs the handoff is measured against, with the
 * same worker and the same responder. fork-per-conn: a fork() per connection
 * (the design the article rejects). proxy: the dispatcher keeps the
 * connection and copies bytes to and from a worker over a Unix socket. (The
 * third, reuseport, is a worker with a listener of its own: worker.c.)
 *
 * Run it:  ./handoff_server --serve --model fork-per-conn|proxy|reuseport
 * See also: fork(2), unix(7), socket(7) (SO_REUSEPORT), epoll(7) (EPOLLET).
 */
#define _GNU_SOURCE
#include "../common/util.h"
#include "server.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

struct relay { /* proxy: one client connection and its upstream to a worker */
	int cfd, ufd, slot;
	int c_eof, u_eof, c_shut, dead;
	size_t c2u_len, c2u_off, u2c_len, u2c_off;
	char c2u[RELAY_BUF], u2c[RELAY_BUF];
};

/* ---- proxy: relay bytes between a client and a worker ------------------- */

void relay_free(struct disp *d, struct relay *r)
{
	epoll_ctl(d->ep, EPOLL_CTL_DEL, r->cfd, NULL);
	epoll_ctl(d->ep, EPOLL_CTL_DEL, r->ufd, NULL);
	close(r->cfd);
	close(r->ufd);
	d->rtab[r->cfd] = d->rtab[r->ufd] = NULL;
	if (d->slots[r->slot].open > 0)
		d->slots[r->slot].open--;
	d->nrelays--;
	free(r);
}

/* Moves bytes one step from src into buf (if empty) and from buf into dst.
 * Returns 1 if anything moved, 0 if not, -1 on an error. */
static int relay_step(int src, int dst, char *buf, size_t *len, size_t *off, int *eof)
{
	int moved = 0;
	if (!*eof && *len == 0) {
		ssize_t r = read(src, buf, RELAY_BUF);
		if (r > 0)
			*len = (size_t)r, *off = 0, moved = 1;
		else if (r == 0)
			*eof = 1, moved = 1;
		else if (errno != EAGAIN && errno != EINTR)
			return -1;
	}
	if (*off < *len) {
		ssize_t w = send(dst, buf + *off, *len - *off, MSG_NOSIGNAL);
		if (w > 0) {
			*off += (size_t)w;
			moved = 1;
			if (*off == *len)
				*len = *off = 0;
		} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
			return -1;
		}
	}
	return moved;
}

/* Edge-triggered: pump both directions until nothing moves. */
void relay_pump(struct disp *d, struct relay *r)
{
	for (;;) {
		int a = relay_step(r->cfd, r->ufd, r->c2u, &r->c2u_len, &r->c2u_off, &r->c_eof);
		int b = relay_step(r->ufd, r->cfd, r->u2c, &r->u2c_len, &r->u2c_off, &r->u_eof);
		if (a < 0 || b < 0)
			break;
		if (r->c_eof && r->c2u_len == 0 && !r->c_shut) {
			shutdown(r->ufd, SHUT_WR); /* pass the client's EOF on */
			r->c_shut = 1;
		}
		if (r->u_eof && r->u2c_len == 0)
			break; /* the worker closed and all it said is delivered */
		if (!a && !b)
			return;
	}
	relay_free(d, r);
}

void relay_start(struct disp *d, int cfd)
{
	int s = pick(d, -1);
	int ufd = -1;
	if (s >= 0 && cfd < d->rtabcap) {
		ufd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (ufd >= 0 &&
		    (ufd >= d->rtabcap ||
		     connect(ufd, (struct sockaddr *)&d->slots[s].uaddr, d->slots[s].ualen) < 0)) {
			close(ufd); /* EAGAIN: the worker's backlog is full */
			ufd = -1;
		}
	}
	struct relay *r = ufd >= 0 ? malloc(sizeof *r) : NULL;
	if (!r) {
		if (ufd >= 0)
			close(ufd);
		refuse(d, cfd);
		return;
	}
	*r = (struct relay){ .cfd = cfd, .ufd = ufd, .slot = s };
	d->rtab[cfd] = d->rtab[ufd] = r;
	d->nrelays++;
	d->slots[s].open++;
	uint32_t evs = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ep_add(d->ep, cfd, evs, tag(T_CONN, (uint32_t)cfd));
	ep_add(d->ep, ufd, evs, tag(T_CONN, (uint32_t)ufd));
	relay_pump(d, r);
}

/* In a new child: close the relays' descriptors, which belong to the
 * dispatcher. */
void relays_forget(struct disp *d)
{
	for (int fd = 0; d->rtab && fd < d->rtabcap; fd++)
		if (d->rtab[fd] && d->rtab[fd]->cfd == fd) {
			close(d->rtab[fd]->cfd);
			close(d->rtab[fd]->ufd);
		}
}

/* ---- fork-per-conn ------------------------------------------------------ */

void fork_serve(struct disp *d, int fd)
{
	if (d->nkids >= MAX_KIDS) {
		refuse(d, fd);
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		refuse(d, fd);
		return;
	}
	if (pid == 0) {
		close_inherited(d, -1);
		d->n->role = "child";
		free(d->kids);
		worker_main(d->n, d->cfg, -1, -1, fd, d->port);
	}
	close(fd); /* the child has it; our copy would keep the connection open */
	d->kids[d->nkids++] = pid;
}

void reap_kid(struct disp *d, pid_t pid)
{
	for (int i = 0; i < d->nkids; i++)
		if (d->kids[i] == pid) {
			d->kids[i] = d->kids[--d->nkids];
			return;
		}
}

