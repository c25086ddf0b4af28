/*
 * scm_rights.h - what the files of stage 03's program share.
 *
 *   scm_rights.c     the lesson: a worker forked first, a connection
 *                    accepted later and passed to it, the proof that both
 *                    descriptors name one open file
 *   demo_subjects.c  the things passed (a connection with its client, a
 *                    regular file, a pipe) and what the worker does with them
 *   demo_breakit.c   the break-it switches: --zero-byte, --small-control,
 *                    --no-cloexec (and the program it execs), --classic-receiver
 *   serve.c          --serve: a pre-forked worker serves every connection
 *   interop.c        the send and recv commands
 *   main.c           the command line
 *
 * See also: scm_rights.c, and ../README.md for the conventions of every
 * stage binary.
 */
#ifndef SCM_RIGHTS_H
#define SCM_RIGHTS_H

#include "../common/narrate.h"

#include <sys/types.h>

enum kind { KIND_SOCKET, KIND_FILE, KIND_PIPE };
extern const char *const kind_names[];    /* "socket", "file", "pipe", NULL */
extern const char *const channel_names[]; /* "stream", "seqpacket", NULL */

struct demo_opts {
	enum kind kind;
	int channel; /* 0 stream, 1 seqpacket */
	int zero_byte, small_control, no_cloexec, classic;
};

/* ---- scm_rights.c ------------------------------------------------------- */

/* The narrated demo; exit status EXIT_LESSON or EXIT_RUNTIME. */
int demo(struct nar *n, const struct demo_opts *o);

/* ---- demo_subjects.c ---------------------------------------------------- */

/* Which file a descriptor names: st_dev and st_ino (0 0 if fstat fails). */
struct file_id {
	unsigned long dev, ino;
};
struct file_id file_id(int fd);

/* One short line each way on the channel; the two sides take turns. */
void chan_say(int ch, const char *fmt, int value);
int chan_hear(int ch, const char *fmt, int *value);

/* What the parent passes, and what it keeps to look at the effects. */
struct subject {
	int fd;       /* the descriptor to pass */
	int keep;     /* --kind pipe: the read end, kept; else -1 */
	int lfd;      /* --kind socket: the listener; else -1 */
	pid_t client; /* --kind socket: the client process; else -1 */
	int client_go; /* write a byte: the client may talk now; else -1 */
};
/* Creates the subject (for a socket: listener, client process, accept);
 * the client process closes the parent's descriptors ch and other (-1: none). */
void make_subject(struct nar *n, const struct demo_opts *o, int ch, int other, struct subject *s);
/* The worker's use of what it received: echo, read and set a flag, write. */
void worker_use(const struct nar *n, const struct demo_opts *o, int fd);
/* --kind file, parent side: what the worker's read and fcntl did to OUR copy. */
void show_shared_state(struct nar *n, int ch, int fd, int *offset, int *nonblock);
/* --kind pipe, parent side: the worker's line, then end-of-file. */
void show_pipe_effect(struct nar *n, int keep);

/* ---- demo_breakit.c ----------------------------------------------------- */

/* The parent's send under --zero-byte / --small-control (the switch says
 * which); extra[] gets the pipes whose write ends went along. */
void breakit_send(struct nar *n, const struct demo_opts *o, int ch, int fd, int extra[2][2]);
/* The worker's narration of a message fdpass_recv rejected. */
void breakit_rejected(const struct nar *n, int st, size_t len, size_t closed, int msg_flags);
/* --small-control, parent side: both pipe read ends must reach EOF. 1 if so. */
int breakit_lost_closed(struct nar *n, int extra[2][2]);
/* The worker execs a program that lists what it inherited (--no-cloexec). */
void worker_exec(const struct nar *n, int fd);
/* That program: `scm_rights --list-fds TRACE_FD SEQ_FD`. */
int list_fds(int trace_fd, int seq_fd);
/* The classic books' receiver: room for one int, a length check, nothing
 * closed. Returns recvmsg's result; *recvfd the descriptor or -1; *in_cmsg
 * how many the control message really held. */
ssize_t classic_recv_fd(int sock, void *buf, size_t len, int *recvfd, int *in_cmsg);
/* --classic-receiver: the whole demo (see demo_breakit.c). */
int classic_demo(struct nar *n);

/* ---- serve.c, interop.c ------------------------------------------------- */

/* --serve on 127.0.0.1:port (0: any free port); exit status. */
int serve(struct nar *n, int port);
/* `scm_rights send ...` and `scm_rights recv ...` (argv[0] is the command). */
int interop(int argc, char **argv, const char *usage);
#endif
