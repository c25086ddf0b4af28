/*
 * narrate.c - narration lines, JSON Lines trace, Mermaid diagram.
 * See narrate.h for why every line goes out with a single write(2).
 */
#define _GNU_SOURCE
#include "narrate.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LINE_MAX_LEN 2048

/* write(2) the whole buffer, retrying on EINTR and short writes. */
static void put(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, buf, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return; /* narration is best effort: never kill a demo over it */
		buf += w;
		len -= (size_t)w;
	}
}

/* Appends to dst (capacity cap, current length *len), truncating safely. */
static void append(char *dst, size_t cap, size_t *len, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void append(char *dst, size_t cap, size_t *len, const char *fmt, ...)
{
	if (*len >= cap - 1)
		return;
	va_list ap;
	va_start(ap, fmt);
	int w = vsnprintf(dst + *len, cap - *len, fmt, ap);
	va_end(ap);
	if (w < 0)
		return;
	*len += (size_t)w < cap - *len ? (size_t)w : cap - *len - 1;
}

/* Moves fd up to 100 or above, so that opening the trace does not shift the
 * descriptor numbers the lesson talks about (they start at 3 either way). */
static int move_high(int fd)
{
	if (fd < 0)
		return -1;
	int high = fcntl(fd, F_DUPFD_CLOEXEC, 100);
	int saved = errno;
	close(fd);
	errno = saved;
	return high;
}

int nar_open(struct nar *n, const char *role, const char *trace_path, int mermaid)
{
	*n = (struct nar){ .role = role, .trace_fd = -1, .seq_fd = -1 };
	if (trace_path) {
		n->trace_fd = move_high(open(trace_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644));
		if (n->trace_fd < 0)
			return -1;
	}
	if (mermaid) {
		/* An unlinked file in /tmp: every process appends, the parent reads it back. */
		n->seq_fd = move_high(open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
		if (n->seq_fd < 0 || fcntl(n->seq_fd, F_SETFL, O_APPEND) < 0) {
			int saved = errno;
			nar_close(n);
			errno = saved;
			return -1;
		}
	}
	return 0;
}

void nar_close(struct nar *n)
{
	if (n->trace_fd >= 0)
		close(n->trace_fd);
	if (n->seq_fd >= 0)
		close(n->seq_fd);
	n->trace_fd = n->seq_fd = -1;
}

void say(const struct nar *n, const char *fmt, ...)
{
	if (n->quiet)
		return;
	char line[LINE_MAX_LEN];
	size_t len = 0;
	append(line, sizeof line, &len, "[%s %d] ", n->role, (int)getpid());
	va_list ap;
	va_start(ap, fmt);
	int w = vsnprintf(line + len, sizeof line - len - 1, fmt, ap);
	va_end(ap);
	if (w > 0)
		len += (size_t)w < sizeof line - len - 1 ? (size_t)w : sizeof line - len - 2;
	line[len++] = '\n';
	put(STDOUT_FILENO, line, len);
}

void out_line(const char *fmt, ...)
{
	char line[LINE_MAX_LEN];
	va_list ap;
	va_start(ap, fmt);
	int w = vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
	if (w < 0)
		return;
	size_t len = (size_t)w < sizeof line - 1 ? (size_t)w : sizeof line - 2;
	line[len++] = '\n';
	put(STDOUT_FILENO, line, len);
}

/* Is s an integer that JSON can carry as a number? */
static int is_number(const char *s, size_t len)
{
	size_t i = (len > 0 && s[0] == '-') ? 1 : 0;
	if (i == len || len - i > 18)
		return 0;
	for (; i < len; i++)
		if (!isdigit((unsigned char)s[i]))
			return 0;
	return 1;
}

/* Keys whose values differ between two runs of the same demo: any key that
 * contains "pid", "port", "ino" or "dev" (peer_pid=, inode=, ...). */
static int is_volatile(const char *kv)
{
	static const char *const words[] = { "pid", "port", "ino", "dev" };
	size_t keylen = strcspn(kv, "=");
	for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
		const char *hit = strstr(kv, words[i]);
		if (hit && (size_t)(hit - kv) < keylen)
			return 1;
	}
	return 0;
}

/* JSON string body: escapes quotes, backslashes and control characters. */
static void append_json_str(char *dst, size_t cap, size_t *len, const char *s, size_t slen)
{
	for (size_t i = 0; i < slen; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			append(dst, cap, len, "\\%c", c);
		else if (c < 0x20)
			append(dst, cap, len, "\\u%04x", c);
		else
			append(dst, cap, len, "%c", c);
	}
}

void ev(const struct nar *n, const char *event, const char *to, const char *kv_fmt, ...)
{
	if (n->trace_fd < 0 && n->seq_fd < 0)
		return;
	char kv[LINE_MAX_LEN / 2] = "";
	if (kv_fmt) {
		va_list ap;
		va_start(ap, kv_fmt);
		vsnprintf(kv, sizeof kv, kv_fmt, ap);
		va_end(ap);
	}
	if (n->trace_fd >= 0) {
		char line[LINE_MAX_LEN];
		size_t len = 0;
		append(line, sizeof line, &len, "{\"role\":\"%s\",\"pid\":%d,\"event\":\"%s\"",
		       n->role, (int)getpid(), event);
		if (to)
			append(line, sizeof line, &len, ",\"to\":\"%s\"", to);
		for (const char *p = kv; *p;) {
			while (*p == ' ')
				p++;
			const char *end = p + strcspn(p, " ");
			const char *eq = memchr(p, '=', (size_t)(end - p));
			if (eq && eq > p) {
				const char *v = eq + 1;
				append(line, sizeof line, &len, ",\"%.*s\":", (int)(eq - p), p);
				if (is_number(v, (size_t)(end - v))) {
					append(line, sizeof line, &len, "%.*s", (int)(end - v), v);
				} else {
					append(line, sizeof line, &len, "\"");
					append_json_str(line, sizeof line, &len, v, (size_t)(end - v));
					append(line, sizeof line, &len, "\"");
				}
			}
			p = end;
		}
		append(line, sizeof line, &len, "}\n");
		put(n->trace_fd, line, len);
	}
	if (n->seq_fd >= 0) {
		/* role TAB to TAB label: what the diagram needs, nothing to parse back.
		 * Values that change from run to run (pids, ports, inodes) are left
		 * out, so the same run draws the same diagram every time. */
		char line[LINE_MAX_LEN];
		size_t len = 0;
		append(line, sizeof line, &len, "%s\t%s\t%s", n->role, to ? to : "", event);
		for (const char *p = kv; *p;) {
			while (*p == ' ')
				p++;
			size_t w = strcspn(p, " ");
			if (w && !is_volatile(p))
				append(line, sizeof line, &len, " %.*s", (int)w, p);
			p += w;
		}
		append(line, sizeof line, &len, "\n");
		put(n->seq_fd, line, len);
	}
}

/* Mermaid cannot parse '-' in a participant name ("worker-1->>x" reads as an
 * arrow): the diagram spells such roles with '_' instead. */
static void mermaid_id(char *role)
{
	for (; *role; role++)
		if (*role == '-')
			*role = '_';
}

int nar_mermaid(const struct nar *n, FILE *out)
{
	if (n->seq_fd < 0) {
		errno = EBADF;
		return -1;
	}
	int fd = dup(n->seq_fd); /* fdopen+fclose must not close the original */
	if (fd < 0)
		return -1;
	FILE *in = fdopen(fd, "r");
	if (!in) {
		close(fd);
		return -1;
	}
	rewind(in);
	/* Participants in order of first appearance, so the diagram reads left to right. */
	char roles[16][32];
	size_t nroles = 0;
	char line[LINE_MAX_LEN];
	while (fgets(line, sizeof line, in)) {
		char *f[2] = { line, strchr(line, '\t') };
		if (!f[1])
			continue;
		*f[1]++ = '\0';
		char *tab = strchr(f[1], '\t');
		if (!tab)
			continue;
		*tab = '\0';
		for (int k = 0; k < 2; k++) {
			if (!*f[k])
				continue;
			size_t i = 0;
			while (i < nroles && strcmp(roles[i], f[k]) != 0)
				i++;
			if (i == nroles && nroles < 16)
				snprintf(roles[nroles++], sizeof roles[0], "%s", f[k]);
		}
	}
	fprintf(out, "sequenceDiagram\n");
	/* Narrower actor boxes and gaps than Mermaid's defaults (150 and 50 px),
	 * so that a diagram of five lifelines fits a page column of about 890 px
	 * at full size instead of being shrunk. */
	fprintf(out, "    %%%%{init: {\"sequence\": {\"actorMargin\": 20, \"width\": 110}}}%%%%\n");
	for (size_t i = 0; i < nroles; i++) {
		mermaid_id(roles[i]);
		fprintf(out, "    participant %s\n", roles[i]);
	}
	rewind(in);
	while (fgets(line, sizeof line, in)) {
		line[strcspn(line, "\n")] = '\0';
		char *to = strchr(line, '\t');
		if (!to)
			continue;
		*to++ = '\0';
		char *label = strchr(to, '\t');
		if (!label)
			continue;
		*label++ = '\0';
		mermaid_id(line);
		mermaid_id(to);
		for (char *c = label; *c; c++)
			if (*c == ';' || *c == '#')
				*c = ','; /* Mermaid treats ';' as a statement end and '#' as an entity */
		if (*to)
			fprintf(out, "    %s->>%s: %s\n", line, to, label);
		else
			fprintf(out, "    Note over %s: %s\n", line, label);
	}
	fclose(in);
	return 0;
}
