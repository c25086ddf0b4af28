/*
 * watchset.h - stage 04's event loops: select, poll and epoll behind one
 * small interface, so the lesson (dup_race.c) reads the same under each.
 *
 * Every watched number carries a tag: the id of the connection it was
 * watched for (>= 1), or a negative TAG_* of the dispatcher. The tag is
 * bookkeeping only - it lets the program tell afterwards which connection an
 * event was *really* about. The loop, like the article's, acts on the
 * descriptor number the poller reports.
 *
 * Functions return -1/errno on failure; none prints, none exits.
 *
 * See also: select(2), poll(2), epoll(7), epoll_ctl(2).
 */
#ifndef WATCHSET_H
#define WATCHSET_H

#include <poll.h>
#include <sys/select.h>

enum poller { P_SELECT, P_POLL, P_EPOLL };
extern const char *const poller_names[]; /* "select", "poll", "epoll", NULL */

#define MAX_WATCH 1024 /* pollfd entries */

/* One readiness report: the number, its tag, and (poll) POLLNVAL. */
struct hit {
	int fd, tag, nval;
};

struct watchset {
	enum poller kind;
	int no_fd_clr;                /* --no-fd-clr: close_watched() forgets to unwatch */
	fd_set set;                   /* select: the master set */
	int tag[FD_SETSIZE];
	struct pollfd pfd[MAX_WATCH]; /* poll: the array */
	int ptag[MAX_WATCH];
	int npfd;
	int epfd;                     /* epoll: the kernel keeps the set */
};

/* An empty set of the given kind (epoll: creates the instance). */
int watch_init(struct watchset *w, enum poller kind, int no_fd_clr);
/* Watch fd for input under tag. EMFILE when the set is full. */
int watch_add(struct watchset *w, int fd, int tag);
/* Stop watching a number: FD_CLR, drop the pollfd(s), EPOLL_CTL_DEL. */
int watch_del(struct watchset *w, int fd);
/*
 * Closes a watched number the way a loop of each kind usually does: a
 * select loop FD_CLRs it, a poll loop drops its pollfd (both would otherwise
 * hand a closed number to the kernel on the next call; --no-fd-clr forgets
 * to); an epoll loop just closes, trusting close() to take the descriptor
 * out of the interest list. That trust is the epoll trap of this stage.
 */
void close_watched(struct watchset *w, int fd);
/* One wait: up to cap hits into out. Returns how many, 0 on a timeout, or
 * -1/errno (select: EBADF when the set names a closed number). timeout_ms
 * -1 = no bound (--serve only). */
int watch_wait(struct watchset *w, int timeout_ms, struct hit *out, int cap);
/* select() failed with EBADF: drop every number in the set that is no longer
 * open (select cannot say which one it was). Returns how many were dropped. */
int watch_drop_closed(struct watchset *w);
/* Frees what watch_init made (the epoll instance). */
void watch_free(struct watchset *w);

/*
 * The worker's side: reads fd until end-of-file, waiting (each wait bounded
 * by timeout_ms) with a poller of the given kind on that one number.
 * Returns the bytes read; *timed_out = 1 if a wait ran out. fd stays open.
 */
long read_to_eof(enum poller kind, int fd, int timeout_ms, int *timed_out);

#endif
