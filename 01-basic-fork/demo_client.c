/*
 * demo_client.c - stage 01's built-in client (see demo_client.h).
 * Part of ./basic_fork; the lesson is in basic_fork.c.
 * See also: connect(2), shutdown(2).
 */
#define _GNU_SOURCE
#include "demo_client.h"
#include "checkpoint.h"
#include "../common/cli.h"
#include "../common/util.h"

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int demo_client(const struct nar *n, int port, int go_fd, const char *cp)
{
	ev(n, "connect", "parent", "port=%d", port); /* before: accept() cannot return earlier */
	int fd = connect_loopback(port);
	if (fd < 0)
		die("client: connect");
	if (checkpoint(cp, "client") < 0) /* the tests: its connection and go_fd, nothing else */
		die("client: checkpoint");
	say(n, "connect(127.0.0.1:%d) -> fd %d", port, fd);
	char go;
	if (read_within(go_fd, &go, 1, WAIT_MS) != 1) /* the parent has forked the child */
		die("client: no word from the parent");
	const char *lines[] = { "hello\n", "inherited\n" };
	for (size_t i = 0; i < 2; i++) {
		char reply[600];
		/* recorded before the write: once the line is out, the child may
		 * record its echo, and the diagram must show the send first */
		ev(n, "send", "child", "bytes=%zu", strlen(lines[i]));
		if (write_all(fd, lines[i], strlen(lines[i])) < 0)
			die("client: write");
		if (read_line(fd, reply, sizeof reply, WAIT_MS) <= 0)
			die("client: no echo from the server");
		reply[strcspn(reply, "\n")] = '\0';
		say(n, "sent \"%.*s\", got back \"%s\"", (int)strlen(lines[i]) - 1, lines[i], reply);
	}
	shutdown(fd, SHUT_WR); /* "no more from me": the child's read() returns 0 */
	say(n, "shutdown(SHUT_WR): told the server I am done sending");

	if (read_within(go_fd, &go, 1, WAIT_MS) != 1) /* the child has exited */
		die("client: no word from the parent");
	char buf[64];
	ssize_t r = read_within(fd, buf, sizeof buf, ABSENT_MS);
	close(fd);
	if (r == 0) {
		say(n, "read() -> 0: end-of-file, the connection is really closed");
		ev(n, "eof", NULL, "seen=1");
		return 0;
	}
	say(n, "no end-of-file %d ms after the child exited: someone still holds the connection",
	    ABSENT_MS);
	ev(n, "eof", NULL, "seen=0 waited_ms=%d", ABSENT_MS);
	return 3;
}
