/*
 * http.c - the request parser and responses of stage 06 (see http.h).
 */
#define _GNU_SOURCE
#include "http.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Does the comma-separated header value v[0..n) contain the token tok? */
static int has_token(const char *v, size_t n, const char *tok)
{
	size_t tl = strlen(tok);
	size_t i = 0;
	while (i < n) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t s = i;
		while (i < n && v[i] != ',')
			i++;
		size_t e = i;
		while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (e - s == tl && strncasecmp(v + s, tok, tl) == 0)
			return 1;
	}
	return 0;
}

static int is_tchar(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

int http_parse(const char *buf, size_t len, size_t *used, int *keep_alive, const char **target,
	       size_t *target_len)
{
	const char *end = memmem(buf, len, "\r\n\r\n", 4);
	if (!end)
		return len >= HTTP_REQ_MAX ? HTTP_BAD : HTTP_MORE;
	size_t head = (size_t)(end - buf) + 4;
	if (head > HTTP_REQ_MAX)
		return HTTP_BAD;

	/* Request line: GET SP target SP HTTP/1.x CRLF */
	const char *p = buf, *eol = memmem(buf, head, "\r\n", 2);
	if ((size_t)(eol - p) < 4 || memcmp(p, "GET ", 4) != 0)
		return HTTP_BAD;
	const char *t = p + 4, *sp = memchr(t, ' ', (size_t)(eol - t));
	if (!sp || sp == t || *t != '/')
		return HTTP_BAD;
	for (const char *c = t; c < sp; c++)
		if ((unsigned char)*c <= ' ' || *c == 0x7f)
			return HTTP_BAD;
	const char *ver = sp + 1;
	if (eol - ver != 8 || memcmp(ver, "HTTP/1.", 7) != 0 || (ver[7] != '0' && ver[7] != '1'))
		return HTTP_BAD;
	int http10 = ver[7] == '0';
	int ka = !http10;

	/* Header lines: name ":" value CRLF, until the empty line. */
	for (p = eol + 2; p < end + 2; p = eol + 2) {
		eol = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
		if (!eol || eol == p)
			break;
		const char *colon = memchr(p, ':', (size_t)(eol - p));
		if (!colon || colon == p)
			return HTTP_BAD;
		for (const char *c = p; c < colon; c++)
			if (!is_tchar(*c))
				return HTTP_BAD;
		size_t nl = (size_t)(colon - p);
		const char *v = colon + 1;
		size_t vl = (size_t)(eol - v);
		while (vl && (*v == ' ' || *v == '\t'))
			v++, vl--;
		if (nl == 10 && strncasecmp(p, "Connection", nl) == 0) {
			if (has_token(v, vl, "close"))
				ka = 0;
			else if (http10 && has_token(v, vl, "keep-alive"))
				ka = 1;
		} else if (nl == 14 && strncasecmp(p, "Content-Length", nl) == 0) {
			for (size_t i = 0; i < vl; i++)
				if (v[i] != '0' && v[i] != ' ' && v[i] != '\t')
					return HTTP_BAD; /* a GET with a body: not ours to read */
		} else if (nl == 17 && strncasecmp(p, "Transfer-Encoding", nl) == 0) {
			return HTTP_BAD;
		}
	}
	*used = head;
	*keep_alive = ka;
	*target = t;
	*target_len = (size_t)(sp - t);
	return HTTP_REQUEST;
}

static size_t fits(int w, size_t cap)
{
	return w > 0 && (size_t)w < cap ? (size_t)w : 0;
}

size_t http_ok(char *out, size_t cap, int pid, int keep_alive)
{
	char body[64];
	int bl = snprintf(body, sizeof body, "served by worker %d", pid);
	return fits(snprintf(out, cap,
			     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
			     "Connection: %s\r\n\r\n%s",
			     bl, keep_alive ? "keep-alive" : "close", body),
		    cap);
}

size_t http_error(char *out, size_t cap, int status)
{
	const char *reason = status == 400 ? "Bad Request"
			     : status == 408 ? "Request Timeout"
					     : "Service Unavailable";
	return fits(snprintf(out, cap,
			     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
			     "Connection: close\r\n\r\n%s\n",
			     status, reason, strlen(reason) + 1, reason),
		    cap);
}
