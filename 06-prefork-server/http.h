/*
 * http.h - just enough HTTP/1.1 for curl and wrk to be the clients of stage
 * 06: one request parser and the three responses the server ever sends.
 *
 * The parser is pure (no I/O): it looks at the bytes a connection has
 * buffered and says "not complete yet", "bad", or "one GET request of N
 * bytes, keep-alive or not". The server decides what to do with that.
 *
 * What counts as bad (answered 400, then the connection is closed): a
 * request line that is not `GET /target HTTP/1.x`, a header line without a
 * name and a colon, a body (Content-Length other than 0, or
 * Transfer-Encoding: a GET here has none), and a header block that does not
 * end within HTTP_REQ_MAX bytes.
 *
 * See also: RFC 9112 (HTTP/1.1 message syntax, persistent connections).
 */
#ifndef HTTP_H
#define HTTP_H

#include <stddef.h>

/* The largest request head we buffer: past this without "\r\n\r\n", 400. */
#define HTTP_REQ_MAX 8192

enum http_parse { HTTP_MORE = 0, HTTP_REQUEST = 1, HTTP_BAD = -1 };

/*
 * Looks for one complete request at the start of buf[0..len). On
 * HTTP_REQUEST, *used is its length (pipelined requests follow it) and
 * *keep_alive says whether the client wants the connection kept open
 * (HTTP/1.1 unless "Connection: close"; HTTP/1.0 only with "keep-alive").
 * *target and *target_len point at the request target inside buf.
 */
int http_parse(const char *buf, size_t len, size_t *used, int *keep_alive, const char **target,
	       size_t *target_len);

/* Writes a response into out[0..cap): 200 with the body "served by worker
 * <pid>", 400 or 408 (both close), 503 (close). Returns its length, or 0 if
 * it does not fit. */
size_t http_ok(char *out, size_t cap, int pid, int keep_alive);
size_t http_error(char *out, size_t cap, int status);

#endif
