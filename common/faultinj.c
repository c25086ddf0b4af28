/*
 * faultinj.c - an LD_PRELOAD shim that makes one named call fail, or lie,
 * on its Nth use: the only way a test can reach the paths that handle a
 * kernel saying no (a full descriptor table, a fork that fails, a peer that
 * is not who it should be) without breaking the machine it runs on.
 *
 * Run it:  FAULTINJ='accept4:3:EMFILE' LD_PRELOAD=common/faultinj.so ./prog
 *
 * FAULTINJ is a comma-separated list of rules CALL[@WHO]:N[+]:WHAT
 *   CALL  accept4 | accept | fork | socketpair | peercred
 *         (peercred: getsockopt(SOL_SOCKET, SO_PEERCRED))
 *   WHO   main (the process that started with the shim) | child (any process
 *         forked from it) | any (the default)
 *   N     the use that fails, counted from 1 (see below); "N+" fails that use
 *         and every one after it, "N-M" uses N to M
 *   WHAT  an errno name (EMFILE, ENFILE, EAGAIN, ENOMEM, ...) - the call
 *         fails with it; or, for peercred only, pid=P - the call succeeds but
 *         reports P as the peer's pid
 * Each time a rule fires the shim writes one line to stderr,
 * "faultinj: CALL #N -> WHAT", so a test can see that the fault was reached.
 *
 * The uses are counted across the whole tree of processes forked from the one
 * that loaded the shim (the counters live in a shared mapping), so
 * "peercred@child:3" means the third check made by any child, whichever
 * child that is; an exec'd program loads the shim afresh and counts from 1,
 * unless FAULTINJ_COUNTS names a file: then the counters live in that file,
 * shared by every process that loads the shim with it, exec'd or not (so
 * "peercred:1:pid=1" fails the first check of the first of a server's
 * exec'd workers only). In an exec'd program "main" is that program.
 * FAULTINJ_SCOPE=image keeps the rules to the program that loaded the shim
 * (and its forks): the shim takes FAULTINJ out of the environment, so what
 * it execs runs without faults (the old generation of a server refuses, the
 * new one it starts does not).
 *
 * See also: ld.so(8) (LD_PRELOAD), dlsym(3) (RTLD_NEXT), errno(3).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

enum { C_ACCEPT4, C_ACCEPT, C_FORK, C_SOCKETPAIR, C_PEERCRED, C_COUNT };
static const char *const call_names[C_COUNT] = { "accept4", "accept", "fork", "socketpair",
						 "peercred" };

enum { W_ANY, W_MAIN, W_CHILD };

struct rule {
	int call, who, errnum;
	unsigned long nth, last; /* uses nth..last fail; last 0: no end ("N+") */
	pid_t fake_pid; /* peercred pid=P; 0 when the rule sets errno instead */
};

#define MAX_RULES 8
static struct rule rules[MAX_RULES];
static int nrules;
static unsigned long *uses; /* [C_COUNT], MAP_SHARED: one count for the tree */
static pid_t main_pid;

static const struct {
	const char *name;
	int value;
} errnos[] = {
	{ "EMFILE", EMFILE }, { "ENFILE", ENFILE },   { "EAGAIN", EAGAIN }, { "ENOMEM", ENOMEM },
	{ "ENOBUFS", ENOBUFS }, { "EPERM", EPERM },   { "EACCES", EACCES }, { "EINTR", EINTR },
	{ "ECONNABORTED", ECONNABORTED }, { "EINVAL", EINVAL },
};

static void bad_spec(const char *spec)
{
	/* A typo must not silently test nothing. */
	dprintf(2, "faultinj: cannot parse FAULTINJ rule '%s'\n", spec);
	_exit(125);
}

static void parse_rule(char *spec)
{
	struct rule r = { .call = -1 };
	char *what = strrchr(spec, ':');
	if (!what || nrules == MAX_RULES)
		bad_spec(spec);
	*what++ = '\0';
	char *nth = strrchr(spec, ':');
	if (!nth)
		bad_spec(spec);
	*nth++ = '\0';
	char *who = strchr(spec, '@');
	if (who) {
		*who++ = '\0';
		if (!strcmp(who, "main"))
			r.who = W_MAIN;
		else if (!strcmp(who, "child"))
			r.who = W_CHILD;
		else if (strcmp(who, "any"))
			bad_spec(spec);
	}
	for (int c = 0; c < C_COUNT; c++)
		if (!strcmp(spec, call_names[c]))
			r.call = c;
	char *end;
	r.nth = r.last = strtoul(nth, &end, 10);
	if (*end == '+')
		r.last = 0, end++;
	else if (*end == '-')
		r.last = strtoul(end + 1, &end, 10);
	if (r.call < 0 || r.nth == 0 || *end || (r.last && r.last < r.nth))
		bad_spec(spec);
	if (!strncmp(what, "pid=", 4) && r.call == C_PEERCRED) {
		r.fake_pid = (pid_t)strtol(what + 4, &end, 10);
		if (*end || r.fake_pid <= 0)
			bad_spec(what);
	} else {
		for (size_t i = 0; i < sizeof errnos / sizeof errnos[0]; i++)
			if (!strcmp(what, errnos[i].name))
				r.errnum = errnos[i].value;
		if (!r.errnum)
			bad_spec(what);
	}
	rules[nrules++] = r;
}

__attribute__((constructor)) static void faultinj_init(void)
{
	main_pid = getpid();
	const char *env = getenv("FAULTINJ");
	if (!env || !*env)
		return;
	size_t size = C_COUNT * sizeof *uses;
	const char *path = getenv("FAULTINJ_COUNTS");
	int fd = -1;
	if (path && *path) {
		/* A file of zeros the first time; every later process maps the
		 * same counters (ftruncate to the same size keeps them). */
		fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
			dprintf(2, "faultinj: %s: %s\n", path, strerrorname_np(errno));
			_exit(125);
		}
	}
	void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | (fd < 0 ? MAP_ANONYMOUS : 0),
		       fd, 0);
	if (m == MAP_FAILED) {
		dprintf(2, "faultinj: mmap: %s\n", strerrorname_np(errno));
		_exit(125);
	}
	if (fd >= 0)
		close(fd); /* the mapping keeps the file; the program sees no new fd */
	uses = m;
	char *copy = strdup(env);
	if (!copy)
		return;
	const char *scope = getenv("FAULTINJ_SCOPE");
	if (scope && !strcmp(scope, "image"))
		unsetenv("FAULTINJ"); /* env still points into environ: use copy from here */
	for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		parse_rule(tok);
	free(copy);
}

/* The rule that fires for this use of `call`, or NULL. Counts the use. */
static const struct rule *fires(int call)
{
	if (!uses)
		return NULL; /* FAULTINJ unset: the shim only passes calls on */
	unsigned long n = __atomic_add_fetch(&uses[call], 1, __ATOMIC_SEQ_CST);
	int child = getpid() != main_pid;
	for (int i = 0; i < nrules; i++) {
		const struct rule *r = &rules[i];
		if (r->call != call || (r->who == W_MAIN && child) || (r->who == W_CHILD && !child))
			continue;
		if (n >= r->nth && (!r->last || n <= r->last)) {
			if (r->fake_pid)
				dprintf(2, "faultinj: %s #%lu -> pid=%d\n", call_names[call], n, (int)r->fake_pid);
			else
				dprintf(2, "faultinj: %s #%lu -> %s\n", call_names[call], n,
					strerrorname_np(r->errnum));
			return r;
		}
	}
	return NULL;
}

/* The real function behind ours. ISO C has no cast from void * to a
 * function pointer, so the address is copied, as dlsym(3) suggests. */
#define NEXT(real, name)                                                   \
	do {                                                               \
		if (!real) {                                               \
			void *f_ = dlsym(RTLD_NEXT, name);                 \
			if (!f_) {                                         \
				dprintf(2, "faultinj: no next %s\n", name); \
				_exit(125);                                \
			}                                                  \
			memcpy(&real, &f_, sizeof f_);                     \
		}                                                          \
	} while (0)

int accept4(int fd, __SOCKADDR_ARG addr, socklen_t *len, int flags)
{
	static int (*real)(int, __SOCKADDR_ARG, socklen_t *, int);
	NEXT(real, "accept4");
	const struct rule *r = fires(C_ACCEPT4);
	if (r) {
		errno = r->errnum;
		return -1;
	}
	return real(fd, addr, len, flags);
}

int accept(int fd, __SOCKADDR_ARG addr, socklen_t *len)
{
	static int (*real)(int, __SOCKADDR_ARG, socklen_t *);
	NEXT(real, "accept");
	const struct rule *r = fires(C_ACCEPT);
	if (r) {
		errno = r->errnum;
		return -1;
	}
	return real(fd, addr, len);
}

pid_t fork(void)
{
	static pid_t (*real)(void);
	NEXT(real, "fork");
	const struct rule *r = fires(C_FORK);
	if (r) {
		errno = r->errnum;
		return -1;
	}
	return real();
}

int socketpair(int domain, int type, int protocol, int sv[2])
{
	static int (*real)(int, int, int, int[2]);
	NEXT(real, "socketpair");
	const struct rule *r = fires(C_SOCKETPAIR);
	if (r) {
		errno = r->errnum;
		return -1;
	}
	return real(domain, type, protocol, sv);
}

int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	static int (*real)(int, int, int, void *, socklen_t *);
	NEXT(real, "getsockopt");
	if (level != SOL_SOCKET || name != SO_PEERCRED)
		return real(fd, level, name, val, len);
	const struct rule *r = fires(C_PEERCRED);
	if (r && !r->fake_pid) {
		errno = r->errnum;
		return -1;
	}
	int rc = real(fd, level, name, val, len);
	if (rc == 0 && r && val && len && *len >= sizeof(struct ucred))
		((struct ucred *)val)->pid = r->fake_pid;
	return rc;
}
