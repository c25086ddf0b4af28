/*
 * server.c - stage 07's machinery: one server generation's poll(2) loop
 * (accept, answer GETs, react to signals), starting the next generation
 * (fork + exec of /proc/self/exe), and noticing when it fails. The upgrade
 * itself, the lesson, is in hot_restart.c; the naive ways in strategies.c.
 *
 * Run it:    ./hot_restart --serve --strategy handoff   (see hot_restart.c)
 * See also:  poll(2), signalfd(2), fork(2), execve(2), waitpid(2),
 *            rename(2) (the pid file is replaced atomically), unix(7).
 */
#define _GNU_SOURCE
#include "hot_restart.h"
#include "../03-scm-rights/fdpass.h"
#include "../06-prefork-server/http.h"
#include "../common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof ((struct conn *)0)->buf == HTTP_REQ_MAX, "conn buffer = HTTP_REQ_MAX");

/* ---- small helpers ------------------------------------------------------ */

long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

socklen_t upgrade_addr(struct sockaddr_un *sa, pid_t old_pid)
{
	/* An abstract name (a leading NUL): no file to create, none left
	 * behind by a crash, and it goes away with the socket. */
	*sa = (struct sockaddr_un){ .sun_family = AF_UNIX };
	int len = snprintf(sa->sun_path + 1, sizeof sa->sun_path - 1, "hot-restart.%d",
			   (int)old_pid);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);
}

/* The pid file is replaced, never rewritten in place: a reader sees the
 * old pid or the new one, never an empty or half-written file. */
int write_pid_file(const struct gen *g)
{
	if (!g->pid_file)
		return 0;
	char tmp[4096], line[32];
	snprintf(tmp, sizeof tmp, "%s.tmp.%d", g->pid_file, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	int len = snprintf(line, sizeof line, "%d\n", (int)getpid());
	if (write_all(fd, line, (size_t)len) < 0 || close(fd) < 0 || rename(tmp, g->pid_file) < 0) {
		int saved = errno;
		unlink(tmp);
		errno = saved;
		return -1;
	}
	return 0;
}

/* Demo only: one short status line for the demo client (a pipe). */
void notify(const struct gen *g, const char *fmt, ...)
{
	if (g->notify_fd < 0)
		return;
	char line[128];
	va_list ap;
	va_start(ap, fmt);
	int len = vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
	if (len < 0 || (size_t)len >= sizeof line - 1)
		return;
	line[len++] = '\n';
	write_all(g->notify_fd, line, (size_t)len);
}

const char *const hold_names[] = { "none", "before-connect", "before-ready", "before-bind",
				   "before-close", NULL };

/* --hold POINT (a test hook): stop here until a line arrives on stdin, so a
 * test can act in the gap deterministically. Bounded. */
void hold_here(const struct gen *g, enum hold_point here)
{
	if (g->hold != here)
		return;
	out_line("[%s %d] holding %s", g->role, (int)getpid(), hold_names[here]);
	char line[64];
	if (read_line(STDIN_FILENO, line, sizeof line, WAIT_MS) <= 0)
		say(&g->n, "no line on stdin within %d ms: going on", WAIT_MS);
}

/* One fd-less message on the SOCK_SEQPACKET upgrade channel. 0 or -1/errno. */
int send_msg(int chan, const char *fmt, ...)
{
	char msg[MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	int len = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	ssize_t w;
	do
		w = send(chan, msg, (size_t)len, MSG_NOSIGNAL);
	while (w < 0 && errno == EINTR);
	return w == len ? 0 : -1;
}

/* One fd-less message, waiting at most timeout_ms. Length, or -1/errno
 * (ETIMEDOUT; EPIPE for end of file; a message with fds is refused and its
 * fds closed by fdpass_recv). */
int recv_msg(int chan, char *buf, size_t cap, int timeout_ms)
{
	int r = wait_readable(chan, timeout_ms);
	if (r <= 0) {
		if (r == 0)
			errno = ETIMEDOUT;
		return -1;
	}
	struct fdpass_rx rx = { .buf = buf, .cap = cap - 1, .max_fds = 0 };
	int st = fdpass_recv(chan, &rx);
	if (st == FDPASS_EOF)
		errno = EPIPE;
	if (st != FDPASS_OK)
		return -1;
	buf[rx.len] = '\0';
	return (int)rx.len;
}

static int upgrade_failed(struct gen *g, const char *why);
static void describe_end(int st, char *out, size_t cap);

/* ---- connections -------------------------------------------------------- */

int conn_add(struct gen *g, int fd, int id)
{
	for (size_t i = 0; i < MAX_CONNS; i++) {
		if (g->conns[i].fd < 0) {
			/* Non-blocking: one slow client must not stall the loop. */
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
			g->conns[i].fd = fd;
			g->conns[i].id = id;
			g->conns[i].len = 0;
			g->conns[i].served = 0;
			g->nconns++;
			return (int)i;
		}
	}
	close(fd); /* full: the client sees a close, and nothing leaks */
	return -1;
}

void conn_close(struct gen *g, size_t slot)
{
	close(g->conns[slot].fd);
	g->conns[slot].fd = -1;
	g->conns[slot].len = 0;
	g->nconns--;
}

/* The response: "served by generation G pid P". close_it adds Connection: close. */
static int respond(const struct gen *g, int fd, int status, int close_it)
{
	char body[64], out[256];
	const char *reason = status == 200   ? "OK"
			     : status == 408 ? "Request Timeout"
					     : "Bad Request";
	int blen = status == 200 ? snprintf(body, sizeof body, "served by generation %d pid %d",
					    g->generation, (int)getpid())
				 : snprintf(body, sizeof body, "error %d", status);
	int len = snprintf(out, sizeof out,
			   "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
			   "Content-Length: %d\r\n%s\r\n%s",
			   status, reason, blen, close_it ? "Connection: close\r\n" : "", body);
	/* A few hundred bytes always fit an empty socket buffer; if not, the
	 * client is not reading and we give up on it. */
	return send(fd, out, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT) == len ? 0 : -1;
}

/* Reads what the connection has, answers every complete request. */
static void serve_conn(struct gen *g, size_t slot)
{
	struct conn *c = &g->conns[slot];
	ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, MSG_DONTWAIT);
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (r <= 0) {
		conn_close(g, slot);
		return;
	}
	c->len += (size_t)r;
	for (;;) {
		size_t used, tlen;
		int ka;
		const char *target;
		int p = http_parse(c->buf, c->len, &used, &ka, &target, &tlen);
		if (p == HTTP_MORE) {
			if (c->len > 0 && g->verbose) {
				say(&g->n, "read %zu bytes of a request on fd %d: "
					   "not complete, kept in my buffer", c->len, c->fd);
				notify(g, "partial %d", g->generation);
			}
			return;
		}
		if (p == HTTP_BAD) {
			respond(g, c->fd, 400, 1);
			conn_close(g, slot);
			return;
		}
		if (tlen == 2)
			c->id = target[1];
		/* Draining, a naive strategy cannot pass the connection on: it
		 * tells the client to go away after this answer. */
		int close_it = !ka || (g->up == UP_DRAINING && g->strategy != ST_HANDOFF);
		/* Told before the answer leaves: the client acts only after it. */
		if (g->verbose) {
			say(&g->n, "GET %.*s on fd %d: served by generation %d", (int)tlen, target,
			    c->fd, g->generation);
			ev(&g->n, "served", "client", "conn=%c", c->id ? c->id : '?');
		}
		int ok = respond(g, c->fd, 200, close_it) == 0;
		memmove(c->buf, c->buf + used, c->len - used);
		c->len -= used;
		c->served++;
		if (!ok || close_it) {
			conn_close(g, slot);
			return;
		}
		if (c->len == 0)
			break;
	}
	/* Between requests again: a draining old generation hands it on now. */
	if (g->up == UP_DRAINING && g->strategy == ST_HANDOFF && hand_over_conns(g, &slot, 1) < 0)
		upgrade_failed(g, "handing over a connection failed");
}

/* ---- starting the next generation --------------------------------------- */

/* What the exec'd generation is told: everything it needs, nothing else. */
static void exec_next(struct gen *g, const char *path)
{
	char a_gen[16], a_old[16], a_port[16], a_nar[32], a_notify[16];
	const char *argv[32];
	int k = 0;
	snprintf(a_gen, sizeof a_gen, "%d", g->generation + 1);
	snprintf(a_old, sizeof a_old, "%d", (int)getppid()); /* we are the fork */
	snprintf(a_port, sizeof a_port, "%d", g->port);
	argv[k++] = g->self;
	argv[k++] = "--serve";
	argv[k++] = "--strategy";
	argv[k++] = strategy_names[g->strategy];
	argv[k++] = "--port";
	argv[k++] = a_port;
	argv[k++] = "--generation";
	argv[k++] = a_gen;
	argv[k++] = "--upgrade-from";
	argv[k++] = a_old;
	if (g->pid_file) {
		argv[k++] = "--pid-file";
		argv[k++] = g->pid_file;
	}
	if (g->hold) {
		argv[k++] = "--hold";
		argv[k++] = hold_names[g->hold];
	}
	if (g->fail == FAIL_CRASH) {
		argv[k++] = "--fail-upgrade";
		argv[k++] = "crash";
	}
	/* The demo's narration files and status pipe survive exec only if we
	 * say so: everything else we hold is O_CLOEXEC and stays behind. */
	if (g->n.trace_fd >= 0 || g->n.seq_fd >= 0 || g->notify_fd >= 0) {
		int fds[3] = { g->n.trace_fd, g->n.seq_fd, g->notify_fd };
		for (int i = 0; i < 3; i++)
			if (fds[i] >= 0)
				fcntl(fds[i], F_SETFD, 0);
		snprintf(a_nar, sizeof a_nar, "%d,%d", fds[0], fds[1]);
		snprintf(a_notify, sizeof a_notify, "%d", fds[2]);
		argv[k++] = "--nar-fds";
		argv[k++] = a_nar;
		argv[k++] = "--notify-fd";
		argv[k++] = a_notify;
	}
	if (g->verbose)
		argv[k++] = "--verbose";
	argv[k] = NULL;
	execv(path, (char *const *)argv);
	dprintf(STDERR_FILENO, "%s: execv %s: %s\n", g->self, path, strerrorname_np(errno));
	_exit(127);
}

/* The next generation could not even be started (no upgrade socket, a fork
 * that failed): say what failed and go on serving; a later SIGHUP tries
 * again. Only stop-start has let go of its listener by then: it binds anew. */
static int upgrade_not_started(struct gen *g, const char *what)
{
	int e = errno;
	char err[ERRNO_TEXT_LEN];
	if (g->up_listen >= 0)
		close(g->up_listen);
	g->up_listen = -1;
	if (g->lfd < 0 && (g->lfd = bind_listener(g->strategy, g->port, NULL)) < 0)
		return -1;
	g->accepting = 1;
	say(&g->n, "cannot start generation %d (%s: %s): generation %d keeps serving",
	    g->generation + 1, what, errno_text(e, err, sizeof err), g->generation);
	ev(&g->n, "upgrade_failed", NULL, NULL);
	notify(g, "failed %d", g->generation + 1);
	return 0;
}

int start_upgrade(struct gen *g)
{
	if (g->up != UP_NONE) {
		say(&g->n, "SIGHUP during an upgrade: refused, one upgrade at a time");
		ev(&g->n, "sighup_refused", NULL, NULL);
		return 0;
	}
	struct sockaddr_un sa;
	socklen_t salen = upgrade_addr(&sa, getpid());
	g->up_listen = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (g->up_listen < 0 || bind(g->up_listen, (struct sockaddr *)&sa, salen) < 0 ||
	    listen(g->up_listen, 4) < 0)
		return upgrade_not_started(g, "the upgrade socket");
	naive_before_fork(g);
	pid_t pid = fork();
	if (pid < 0)
		return upgrade_not_started(g, "fork");
	if (pid == 0) {
		unblock_signals();
		exec_next(g, g->fail == FAIL_EXEC ? "/proc/self/exe.missing" : "/proc/self/exe");
	}
	g->child = pid;
	g->up = UP_CONNECT;
	g->deadline_ms = now_ms() + WAIT_MS;
	say(&g->n, "SIGHUP: started generation %d (pid %d) from /proc/self/exe", g->generation + 1,
	    (int)pid);
	ev(&g->n, "exec", NULL, "next=gen%d", g->generation + 1);
	/* --fail-upgrade breaks one upgrade; the next SIGHUP works. */
	g->fail = FAIL_NONE;
	return 0;
}

/* The next generation failed (died, timed out, misbehaved): nothing was
 * taken from us that we do not still hold, so we simply go on serving. */
static int upgrade_failed(struct gen *g, const char *why)
{
	if (g->chan >= 0)
		close(g->chan);
	if (g->up_listen >= 0)
		close(g->up_listen);
	g->chan = g->up_listen = -1;
	char end[64] = "";
	if (g->child > 0) {
		/* A channel that closed means it is on its way out: let it finish
		 * dying (bounded) so we can say how; then make sure it is gone. */
		int st;
		if (wait_child(g->child, ABSENT_MS, &st) == 0) {
			end[0] = ';';
			end[1] = ' ';
			describe_end(st, end + 2, sizeof end - 2);
		} else {
			kill(g->child, SIGKILL);
			reap_child(g->child, WAIT_MS, NULL);
		}
		g->child = 0;
	}
	if (g->lfd < 0 && (g->lfd = bind_listener(g->strategy, g->port, NULL)) < 0)
		return -1;
	g->accepting = 1;
	g->up = UP_NONE;
	/* It may have named itself in the pid file already: we are the master. */
	if (write_pid_file(g) < 0)
		return -1;
	say(&g->n, "generation %d failed (%s%s): generation %d keeps serving", g->generation + 1,
	    why, end, g->generation);
	ev(&g->n, "upgrade_failed", NULL, NULL);
	notify(g, "failed %d", g->generation + 1);
	return 0;
}

/* Drained: every connection handed over or finished. DONE, then we exit. */
static int old_finishes(struct gen *g)
{
	send_msg(g->chan, "DONE");
	close(g->chan);
	close(g->lfd);
	g->chan = g->lfd = -1;
	say(&g->n, "drained (%d connection(s) handed over): exiting", g->handed);
	ev(&g->n, "exit", NULL, NULL);
	notify(g, "exit %d", g->generation);
	return 0;
}

/* "exit status 127", "killed by ABRT": how a child ended, as waitpid said. */
static void describe_end(int st, char *out, size_t cap)
{
	if (WIFSIGNALED(st))
		snprintf(out, cap, "killed by %s", sigabbrev_np(WTERMSIG(st)));
	else
		snprintf(out, cap, "exit status %d", WEXITSTATUS(st));
}

/* SIGCHLD: was it the next generation, before it finished taking over? */
static int child_exited(struct gen *g)
{
	int st;
	pid_t p;
	while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
		if (p != g->child)
			continue;
		g->child = 0;
		char why[64];
		describe_end(st, why, sizeof why);
		if (g->up != UP_NONE && upgrade_failed(g, why) < 0)
			return -1;
	}
	return 0;
}

static int on_signal(struct gen *g)
{
	struct signalfd_siginfo si;
	while (read(g->sigfd, &si, sizeof si) == sizeof si) {
		if (si.ssi_signo == SIGHUP && start_upgrade(g) < 0)
			return -1;
		if (si.ssi_signo == SIGCHLD && child_exited(g) < 0)
			return -1;
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
			g->stop = 1;
	}
	return 0;
}

/* The upgrade channel has something for us (either side). */
static int on_channel(struct gen *g)
{
	if (g->up == UP_TAKING)
		return receive_from_old(g);
	char msg[MSG_MAX];
	if (g->up == UP_DRAINING) /* it has nothing to say now: it went away */
		return upgrade_failed(g, "the upgrade channel closed while we drained");
	if (recv_msg(g->chan, msg, sizeof msg, 0) < 0 || strcmp(msg, "READY") != 0)
		return upgrade_failed(g, "the upgrade channel closed before READY");
	if (g->up != UP_READY)
		return upgrade_failed(g, "READY twice");
	notify(g, "handing %d", g->generation + 1);
	if (g->strategy != ST_HANDOFF)
		return naive_old_on_ready(g);
	if (old_stops_accepting(g) < 0)
		return upgrade_failed(g, "handing over the idle connections failed");
	notify(g, "draining %zu", g->nconns);
	return 0;
}

/* The next generation connected to our abstract socket. */
static int on_upgrade_connect(struct gen *g)
{
	int c = accept4(g->up_listen, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	if (check_upgrade_peer(c, g->child) < 0) {
		say(&g->n, "refused an upgrade peer that is not generation %d: %s",
		    g->generation + 1, strerrorname_np(errno));
		close(c);
		return 0;
	}
	close(g->up_listen);
	g->up_listen = -1;
	g->chan = c;
	g->up = UP_READY;
	if (hand_over_listener(g) < 0)
		return upgrade_failed(g, "sending the listener failed");
	return 0;
}

/* SIGTERM: close everything; a next generation still starting goes too. */
static int shut_down(struct gen *g)
{
	if (g->child > 0) {
		kill(g->child, SIGTERM);
		reap_child(g->child, WAIT_MS, NULL);
	}
	for (size_t i = 0; i < MAX_CONNS; i++)
		if (g->conns[i].fd >= 0)
			conn_close(g, i);
	int fds[] = { g->lfd, g->chan, g->up_listen };
	for (size_t i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	say(&g->n, "SIGTERM: closed everything, exiting");
	return 0;
}

/* ---- the loop ----------------------------------------------------------- */

int gen_serve(struct gen *g)
{
	struct pollfd *pf = calloc(MAX_CONNS + 4, sizeof *pf);
	size_t *slot_of = calloc(MAX_CONNS + 4, sizeof *slot_of);
	if (!pf || !slot_of) {
		free(pf);
		free(slot_of);
		return -1;
	}
	int rc = 0;
	for (;;) {
		if (g->stop) {
			rc = shut_down(g);
			break;
		}
		if (g->up == UP_DRAINING && g->nconns == 0) {
			rc = old_finishes(g);
			break;
		}
		nfds_t n = 0;
		enum { P_SIG, P_LISTEN, P_UP, P_CHAN, P_CONN };
		int kind[MAX_CONNS + 4];
		pf[n] = (struct pollfd){ .fd = g->sigfd, .events = POLLIN };
		kind[n++] = P_SIG;
		if (g->accepting) {
			pf[n] = (struct pollfd){ .fd = g->lfd, .events = POLLIN };
			kind[n++] = P_LISTEN;
		}
		if (g->up_listen >= 0) {
			pf[n] = (struct pollfd){ .fd = g->up_listen, .events = POLLIN };
			kind[n++] = P_UP;
		}
		if (g->chan >= 0) {
			pf[n] = (struct pollfd){ .fd = g->chan, .events = POLLIN };
			kind[n++] = P_CHAN;
		}
		for (size_t i = 0; i < MAX_CONNS; i++) {
			if (g->conns[i].fd >= 0) {
				pf[n] = (struct pollfd){ .fd = g->conns[i].fd, .events = POLLIN };
				slot_of[n] = i;
				kind[n++] = P_CONN;
			}
		}
		int r = poll(pf, n, 200);
		if (r < 0 && errno != EINTR) {
			rc = -1;
			break;
		}
		if (g->up != UP_NONE && g->up != UP_TAKING && now_ms() > g->deadline_ms) {
			if (g->up != UP_DRAINING) {
				if (upgrade_failed(g, "not ready in time") < 0)
					rc = -1;
			} else {
				/* Drain bound: a request still half-read gets 408. */
				for (size_t i = 0; i < MAX_CONNS; i++)
					if (g->conns[i].fd >= 0) {
						respond(g, g->conns[i].fd, 408, 1);
						conn_close(g, i);
					}
			}
			if (rc < 0)
				break;
			continue;
		}
		for (nfds_t i = 0; r > 0 && i < n && rc == 0; i++) {
			if (!pf[i].revents)
				continue;
			switch (kind[i]) {
			case P_SIG:
				rc = on_signal(g);
				break;
			case P_LISTEN:
				if (g->accepting)
					for (int k = 0; k < 64; k++) {
						int c = accept_shedding(g->lfd, &g->spare);
						if (c < 0)
							break;
						conn_add(g, c, 0);
					}
				break;
			case P_UP:
				if (g->up_listen >= 0)
					rc = on_upgrade_connect(g);
				break;
			case P_CHAN:
				if (g->chan >= 0)
					rc = on_channel(g);
				break;
			case P_CONN:
				if (g->conns[slot_of[i]].fd == pf[i].fd)
					serve_conn(g, slot_of[i]);
				break;
			}
			/* The table changed under the loop (a failed upgrade, a
			 * handover): look again with a fresh poll set. */
			if (kind[i] != P_CONN)
				break;
		}
		if (rc < 0)
			break;
	}
	free(pf);
	free(slot_of);
	return rc;
}
