/*
 * demo_client.h - stage 01's built-in client, a process of its own.
 *
 * Connects, and once the parent says the child is there (a byte on go_fd),
 * sends two lines, reads the echoes and shuts down its write side; then -
 * only once the parent says the child has exited (a second byte) - checks
 * within ABSENT_MS whether the connection reached end-of-file. The parent
 * orders these steps with the pipe, so the diagram is the same in every run.
 *
 * Returns the client's exit status: 0 end-of-file seen, 3 none (someone
 * still holds the connection). It closes its connection; go_fd is the
 * caller's. Dies (exit 1) on a failed call.
 */
#ifndef DEMO_CLIENT_H
#define DEMO_CLIENT_H

#include "../common/narrate.h"

int demo_client(const struct nar *n, int port, int go_fd, const char *cp);

#endif
