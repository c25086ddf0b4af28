/*
 * relay.h - stage 02's --serve: a line relay, TCP client -> parent ->
 * worker (over the socketpair channel) -> parent -> client.
 */
#ifndef RELAY_H
#define RELAY_H

#include "../common/narrate.h"

/* SOCK_STREAM, SOCK_SEQPACKET: indexed by the --type choice (0, 1). */
extern const int type_values[];

/*
 * Serves on 127.0.0.1:port until SIGTERM/SIGINT. Every descriptor it opens
 * is closed and the worker reaped before it returns. Returns EXIT_LESSON,
 * or EXIT_RUNTIME when the worker did not exit on the channel's end-of-file
 * (it was killed) or failed. cp: --checkpoint PATH or NULL.
 */
int serve(struct nar *n, int port, int type, const char *cp);

#endif
