/*
 * cli.c - common options, argument checks, and the two ways main() ends badly.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "narrate.h"
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Noreturn void usage_error(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s: bad argument: %s (see --help)\n", program_invocation_short_name, msg);
	exit(EXIT_USAGE);
}

_Noreturn void die(const char *fmt, ...)
{
	int saved = errno;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	char err[ERRNO_TEXT_LEN];
	fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, msg,
		errno_text(saved, err, sizeof err));
	exit(EXIT_RUNTIME);
}

long parse_long(const char *what, const char *arg, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(arg, &end, 10);
	if (errno || end == arg || *end || v < lo || v > hi)
		usage_error("%s must be a whole number from %ld to %ld, not '%s'", what, lo, hi, arg);
	return v;
}

int parse_choice(const char *what, const char *arg, const char *const *choices)
{
	for (int i = 0; choices[i]; i++)
		if (strcmp(arg, choices[i]) == 0)
			return i;
	char list[256] = "";
	for (int i = 0; choices[i]; i++) {
		strncat(list, i ? "|" : "", sizeof list - strlen(list) - 1);
		strncat(list, choices[i], sizeof list - strlen(list) - 1);
	}
	usage_error("%s must be one of %s, not '%s'", what, list, arg);
}

int common_opt(struct common_opts *o, int c, const char *arg, const char *usage)
{
	switch (c) {
	case OPT_TRACE:
		o->trace = arg;
		return 1;
	case OPT_MERMAID:
		o->mermaid = 1;
		return 1;
	case OPT_SERVE:
		o->serve = 1;
		return 1;
	case OPT_PORT:
		o->port = (int)parse_long("--port", arg, 0, 65535);
		o->port_given = 1;
		return 1;
	case OPT_HELP:
		fputs(usage, stdout);
		exit(0);
	case '?':
	case ':':
		/* getopt has already printed the one line, naming the option. */
		exit(EXIT_USAGE);
	default:
		return 0;
	}
}

void common_done(const struct common_opts *o, int argc, char **argv, const char *usage)
{
	(void)usage;
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (o->port_given && !o->serve)
		usage_error("--port goes with --serve");
	if (o->serve && o->mermaid)
		usage_error("--mermaid draws a demo run; it does not go with --serve");
}

void announce_listening(int port)
{
	out_line("listening on 127.0.0.1:%d", port);
}
