/*
 * checkpoint.h - a stop where a test can look at a process's descriptor
 * table from outside (/proc/PID/fd), at a moment the program chooses.
 *
 * Stages 01, 02 and 04 take `--checkpoint PATH`; at each checkpoint the
 * process connects to the Unix socket PATH (the test listens there), sends
 * one line "PID FD LABEL" (FD: the descriptor of this very connection, which
 * the test leaves out), and waits - bounded - for one byte back. While it
 * waits, its table is exactly what the code before the checkpoint left in
 * it: no sleeps, no race. Without --checkpoint it does nothing.
 *
 * Returns 0, or -1/errno (ETIMEDOUT when no answer came); never prints.
 * See also: unix(7), proc(5) (/proc/PID/fd).
 */
#ifndef CHECKPOINT_H
#define CHECKPOINT_H

#define CHECKPOINT_USAGE \
	"  --checkpoint PATH  for the tests: stop at each checkpoint until the test\n" \
	"                  listening on the Unix socket PATH has read /proc/PID/fd\n"

/* path NULL: a no-op. label: one word ("child", "worker-recv", ...). */
int checkpoint(const char *path, const char *label);

#endif
