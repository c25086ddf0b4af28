/*
 * escape.h - bytes from the network, made safe to print.
 *
 * A client chooses every byte it sends. Printed as they are, an ESC byte
 * starts a terminal control sequence (colours, cursor moves, a window title,
 * on some terminals worse), a CR rewrites the line a student is reading, and
 * a NUL cuts a C string short. escape_bytes() writes every byte outside
 * printable ASCII, and the backslash itself, as \xHH, so what is printed
 * says exactly what arrived and nothing else.
 *
 * Library code: no I/O, no allocation.
 * See also: console_codes(4), ascii(7).
 */
#ifndef ESCAPE_H
#define ESCAPE_H

#include <stddef.h>

/* The destination size that holds len escaped bytes and the NUL. */
#define ESCAPED_CAP(len) (4 * (len) + 1)

enum { ESCAPE_SPACE = 1 }; /* also write ' ' as \x20 (for key=value traces) */

/* Writes src[0..len) into dst (cap bytes, cap > 0), escaped, NUL-terminated.
 * When dst is too small the output stops before the escape that would not
 * fit (never half an escape). Returns dst. */
char *escape_bytes(char *dst, size_t cap, const void *src, size_t len, int flags);

#endif
