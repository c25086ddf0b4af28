/*
 * cli.h - the command line every stage binary shares (the top README.md,
 * "Layout", the paragraph on conventions): --trace FILE, --mermaid,
 * --serve [--port N], --help, and the exit codes: 0 the lesson's outcome
 * happened, 1 a runtime failure (the message names the call and the errno:
 * "sendmsg: EPIPE (Broken pipe)"), 2 a bad argument.
 *
 * Only main() and the code it calls directly use these: they print and exit.
 * Library code (common/util.c, fdpass.c) returns -1/errno instead.
 */
#ifndef CLI_H
#define CLI_H

#include <getopt.h>

enum { EXIT_LESSON = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

struct common_opts {
	const char *trace; /* --trace FILE */
	int mermaid;       /* --mermaid */
	int serve;         /* --serve */
	int port;          /* --port N (0 = ephemeral) */
	int port_given;    /* --port was on the command line */
};

/* Option codes >= 0x100 so a stage's own short options never collide. */
enum { OPT_TRACE = 0x100, OPT_MERMAID, OPT_SERVE, OPT_PORT, OPT_HELP, OPT_STAGE };

#define COMMON_LONGOPTS                                      \
	{ "trace", required_argument, NULL, OPT_TRACE },     \
	{ "mermaid", no_argument, NULL, OPT_MERMAID },       \
	{ "serve", no_argument, NULL, OPT_SERVE },           \
	{ "port", required_argument, NULL, OPT_PORT },       \
	{ "help", no_argument, NULL, OPT_HELP }

#define COMMON_USAGE                                                                   \
	"  --trace FILE    also write every event as JSON Lines to FILE\n"              \
	"  --mermaid       after the run, print a Mermaid sequence diagram of it\n"     \
	"  --serve         serve clients on 127.0.0.1 instead of running the demo\n"    \
	"  --port N        with --serve: the port (default 0, any free port)\n"         \
	"  --help          this text\n"

/*
 * Handles one of the common options. Returns 1 if it was one (and handled),
 * 0 if it is the stage's own. Prints usage and exits 0 on --help; prints one
 * line and exits 2 on a bad value or an unknown option.
 */
int common_opt(struct common_opts *o, int c, const char *arg, const char *usage);
/* After parsing: refuses leftover arguments and --port without --serve. */
void common_done(const struct common_opts *o, int argc, char **argv, const char *usage);

/* A whole number in [lo, hi], or one line on stderr and exit 2. */
long parse_long(const char *what, const char *arg, long lo, long hi);
/* One of the words in `choices` (NULL-terminated): its index, or exit 2. */
int parse_choice(const char *what, const char *arg, const char *const *choices);

/* "prog: bad argument: ..." on stderr, exit 2. */
_Noreturn void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "prog: CALL: ENAME (text)" on stderr (errno_text), exit 1. */
_Noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "listening on 127.0.0.1:PORT", the first line --serve prints, flushed. */
void announce_listening(int port);

#endif
