/*
 * util.h - the small helpers every stage needs: loopback sockets, bounded
 * waits, children that are always reaped, and a look at the descriptor table.
 *
 * Every function returns -1 and sets errno on failure (ETIMEDOUT when a
 * bound ran out); none prints, none exits.
 *
 * See also: poll(2), pidfd_open(2), kcmp(2), proc(5) (/proc/PID/fd),
 * strerrorname_np(3).
 */
#ifndef UTIL_H
#define UTIL_H

#include <stddef.h>
#include <sys/types.h>

/* The bounds. A wait for something that should happen gets WAIT_MS; a wait
 * that shows something does *not* happen (the lesson of a break-it switch)
 * gets ABSENT_MS, then the demo says what did not arrive. */
#define WAIT_MS 10000
#define ABSENT_MS 1000

/* TCP on 127.0.0.1 only. port 0 = ephemeral; *bound gets the real port. */
int listen_loopback(int port, int *bound);
/* The same, with options: LOOPBACK_REUSEPORT (SO_REUSEPORT: several sockets
 * of one user share the port, the kernel spreads connections among those that
 * listen), LOOPBACK_NONBLOCK, and LOOPBACK_NO_LISTEN (bind only: holds the
 * port, takes no connection). */
enum { LOOPBACK_REUSEPORT = 1, LOOPBACK_NONBLOCK = 2, LOOPBACK_NO_LISTEN = 4 };
int listen_loopback_opts(int port, int *bound, int opts);
int connect_loopback(int port);

/*
 * accept4(SOCK_CLOEXEC) that cannot spin. When the process is out of
 * descriptors (EMFILE/ENFILE) the pending connection stays in the backlog
 * and poll() reports it again at once: a busy loop. With a spare descriptor
 * (*spare, opened on /dev/null beforehand) we close the spare, accept the
 * connection, close it - the client sees a clean close instead of a hang -
 * and take the spare back. Returns the new fd, or -1/errno (EMFILE then too).
 */
int accept_shedding(int lfd, int *spare);
/* Opens the spare descriptor accept_shedding() needs. -1/errno. */
int spare_fd(void);

/* 1 = readable (or EOF/error pending), 0 = timed out, -1 = error. */
int wait_readable(int fd, int timeout_ms);
/* One read(2) that waits at most timeout_ms: >0 bytes, 0 EOF, -1 error
 * (ETIMEDOUT when nothing came). */
ssize_t read_within(int fd, void *buf, size_t len, int timeout_ms);
/* Reads and discards until end-of-file, each read waiting at most
 * timeout_ms: 1 if end-of-file came, 0 if not (timed out, or an error).
 * On a pipe's read end, EOF means no write end is open anywhere. */
int wait_eof(int fd, int timeout_ms);
/* Reads one '\n'-terminated line (kept, NUL-terminated) byte by byte, so
 * nothing after the line is consumed. Returns its length, 0 on EOF. */
ssize_t read_line(int fd, char *buf, size_t cap, int timeout_ms);
/* write(2) everything, retrying on EINTR and short writes; MSG_NOSIGNAL
 * semantics are not available for write(), so callers ignore SIGPIPE. */
int write_all(int fd, const void *buf, size_t len);

/* Waits for the child at most timeout_ms and reaps it; *status as waitpid. */
int wait_child(pid_t pid, int timeout_ms, int *status);
/* Waits timeout_ms, then SIGKILLs and reaps: a child is never left behind. */
int reap_child(pid_t pid, int timeout_ms, int *status);

/* /proc/PID/fd/FD as text ("socket:[1234]", "pipe:[99]", "/tmp/x"). */
int fd_target(pid_t pid, int fd, char *buf, size_t cap);
/* The descriptor numbers this process holds, ascending; returns how many. */
int fd_list(int *fds, int cap);
/* kcmp(KCMP_FILE): 0 = both name the same open file description. */
int same_file(pid_t pid1, int fd1, pid_t pid2, int fd2);

/* "EPIPE (Broken pipe)": the errno by name and by text, as TLPI's errExit
 * prints it (strerrorname_np, glibc 2.32). Writes at most cap bytes into
 * buf and returns buf; ERRNO_TEXT_LEN is always enough. */
#define ERRNO_TEXT_LEN 96
const char *errno_text(int err, char *buf, size_t cap);

/* Blocks SIGINT and SIGTERM (and SIGCHLD when asked) and returns a
 * signalfd that becomes readable when one arrives: a server's poll loop
 * then sees a shutdown request like any other event. */
int signal_fd(int with_sigchld);
/* Restores the default mask in a child (blocked signals survive fork). */
void unblock_signals(void);

#endif
