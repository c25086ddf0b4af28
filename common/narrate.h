/*
 * narrate.h - what every stage says, in three forms.
 *
 *   say()   one narration line on stdout, tagged "[role pid]", for the student;
 *   ev()    one event: a JSON object on a line of the --trace file, for tests,
 *           and a record for the --mermaid diagram;
 *   nar_mermaid() the diagram of the whole run, participants named by role.
 *
 * Parent and children share one `struct nar` by fork(): the trace and the
 * diagram records are files opened with O_APPEND, so every process appends
 * whole lines with one write(2) and the order in the file is the order in
 * which things happened. Narration lines also go out with one write(2), so
 * lines from different processes never interleave and nothing sits in a
 * stdio buffer to be duplicated by fork().
 *
 * See also: write(2) (O_APPEND), fork(2).
 */
#ifndef NARRATE_H
#define NARRATE_H

#include <stdio.h>

struct nar {
	const char *role; /* who is speaking: "parent", "worker", "client", ... */
	int trace_fd;     /* --trace FILE: JSON Lines; -1 when off */
	int seq_fd;       /* records for --mermaid (an unlinked temp file); -1 when off */
	int quiet;        /* 1: say() prints nothing (ev() still records) */
};

/* Opens the trace file and/or the diagram records. -1/errno. */
int nar_open(struct nar *n, const char *role, const char *trace_path, int mermaid);
/* Closes what nar_open opened (call once per process that owns the copies). */
void nar_close(struct nar *n);

/* One narration line: "[role pid] text". */
void say(const struct nar *n, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * One event. `to` names the role at the other end of an arrow (a message
 * sent), or is NULL for something that happened inside `role`. `kv` is a
 * space-separated list of key=value pairs ("fd=5 bytes=1"); integers become
 * JSON numbers, anything else a JSON string (no spaces inside values).
 */
void ev(const struct nar *n, const char *event, const char *to, const char *kv_fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Prints the Mermaid sequenceDiagram of every event recorded so far. -1/errno. */
int nar_mermaid(const struct nar *n, FILE *out);

/* Writes one whole line (a '\n' is added) to fd 1 with a single write(2). */
void out_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
