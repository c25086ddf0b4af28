/*
 * watchset.c - select, poll and epoll behind one interface (watchset.h), and
 * the worker's bounded wait-and-read with the same three.
 *
 * Part of stage 04 (./dup_race); the lesson is in dup_race.c.
 * See also: select(2), poll(2) (POLLNVAL), epoll(7), epoll_ctl(2).
 */
#define _GNU_SOURCE
#include "watchset.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "../common/util.h"

const char *const poller_names[] = { "select", "poll", "epoll", NULL };

int watch_init(struct watchset *w, enum poller kind, int no_fd_clr)
{
	memset(w, 0, sizeof *w);
	w->kind = kind;
	w->no_fd_clr = no_fd_clr;
	w->epfd = -1;
	FD_ZERO(&w->set);
	if (kind == P_EPOLL && (w->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
		return -1;
	return 0;
}

int watch_add(struct watchset *w, int fd, int tag)
{
	switch (w->kind) {
	case P_SELECT:
		if (fd >= FD_SETSIZE) {
			errno = EMFILE;
			return -1;
		}
		FD_SET(fd, &w->set);
		w->tag[fd] = tag;
		return 0;
	case P_POLL:
		if (w->npfd == MAX_WATCH) {
			errno = EMFILE;
			return -1;
		}
		w->pfd[w->npfd] = (struct pollfd){ .fd = fd, .events = POLLIN };
		w->ptag[w->npfd++] = tag;
		return 0;
	case P_EPOLL: {
		/* The event carries the number (what the loop uses) and the tag. */
		struct epoll_event e = { .events = EPOLLIN,
					 .data.u64 = ((uint64_t)(uint32_t)tag << 32) | (uint32_t)fd };
		return epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &e);
	}
	}
	errno = EINVAL;
	return -1;
}

int watch_del(struct watchset *w, int fd)
{
	switch (w->kind) {
	case P_SELECT:
		if (fd < FD_SETSIZE)
			FD_CLR(fd, &w->set);
		return 0;
	case P_POLL:
		for (int i = 0; i < w->npfd;)
			if (w->pfd[i].fd == fd) {
				w->pfd[i] = w->pfd[--w->npfd];
				w->ptag[i] = w->ptag[w->npfd];
			} else {
				i++;
			}
		return 0;
	case P_EPOLL:
		return epoll_ctl(w->epfd, EPOLL_CTL_DEL, fd, NULL);
	}
	errno = EINVAL;
	return -1;
}

void close_watched(struct watchset *w, int fd)
{
	if (w->kind != P_EPOLL && !w->no_fd_clr)
		watch_del(w, fd);
	close(fd);
}

int watch_wait(struct watchset *w, int timeout_ms, struct hit *out, int cap)
{
	int n = 0;
	switch (w->kind) {
	case P_SELECT: {
		fd_set r = w->set;
		int maxfd = -1;
		for (int fd = 0; fd < FD_SETSIZE; fd++)
			if (FD_ISSET(fd, &w->set))
				maxfd = fd;
		struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
		if (select(maxfd + 1, &r, NULL, NULL, timeout_ms < 0 ? NULL : &tv) < 0)
			return -1;
		for (int fd = 0; fd <= maxfd && n < cap; fd++)
			if (FD_ISSET(fd, &r))
				out[n++] = (struct hit){ fd, w->tag[fd], 0 };
		return n;
	}
	case P_POLL:
		if (poll(w->pfd, (nfds_t)w->npfd, timeout_ms) < 0)
			return -1;
		for (int i = 0; i < w->npfd && n < cap; i++)
			if (w->pfd[i].revents)
				out[n++] = (struct hit){ w->pfd[i].fd, w->ptag[i],
							 !!(w->pfd[i].revents & POLLNVAL) };
		return n;
	case P_EPOLL: {
		struct epoll_event evs[64];
		int r = epoll_wait(w->epfd, evs, cap < 64 ? cap : 64, timeout_ms);
		if (r < 0)
			return -1;
		for (int i = 0; i < r; i++)
			out[n++] = (struct hit){ (int)(uint32_t)evs[i].data.u64,
						 (int)(uint32_t)(evs[i].data.u64 >> 32), 0 };
		return n;
	}
	}
	errno = EINVAL;
	return -1;
}

int watch_drop_closed(struct watchset *w)
{
	int dropped = 0;
	for (int fd = 0; fd < FD_SETSIZE; fd++)
		if (FD_ISSET(fd, &w->set) && fcntl(fd, F_GETFD) < 0) {
			FD_CLR(fd, &w->set);
			dropped++;
		}
	return dropped;
}

void watch_free(struct watchset *w)
{
	if (w->epfd >= 0)
		close(w->epfd);
	w->epfd = -1;
}

/* ---- the worker's wait -------------------------------------------------- */

/* Waits (bounded) until fd is readable, with a poller of the given kind. */
static int wait_one(enum poller kind, int ep, int fd, int timeout_ms)
{
	int r;
	do {
		if (kind == P_SELECT && fd < FD_SETSIZE) {
			fd_set s;
			FD_ZERO(&s);
			FD_SET(fd, &s);
			struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
			r = select(fd + 1, &s, NULL, NULL, &tv);
		} else if (kind == P_EPOLL) {
			struct epoll_event e;
			r = epoll_wait(ep, &e, 1, timeout_ms);
		} else {
			r = wait_readable(fd, timeout_ms);
		}
	} while (r < 0 && errno == EINTR);
	return r;
}

long read_to_eof(enum poller kind, int fd, int timeout_ms, int *timed_out)
{
	long total = 0;
	char buf[4096];
	int ep = -1;
	*timed_out = 0;
	if (kind == P_EPOLL) {
		/* epoll_ctl(ADD) checks readiness right away: bytes that arrived
		 * while the descriptor was in flight are reported like any other. */
		struct epoll_event e = { .events = EPOLLIN, .data.fd = fd };
		ep = epoll_create1(EPOLL_CLOEXEC);
		if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
			int saved = errno;
			if (ep >= 0)
				close(ep);
			errno = saved;
			return -1;
		}
	}
	for (;;) {
		int r = wait_one(kind, ep, fd, timeout_ms);
		if (r <= 0) {
			*timed_out = (r == 0);
			break;
		}
		ssize_t k = read(fd, buf, sizeof buf);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		total += k;
	}
	if (ep >= 0)
		close(ep);
	return total;
}
