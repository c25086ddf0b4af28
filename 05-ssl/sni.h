/*
 * sni.h - the server_name a client asks for, read from its ClientHello
 * before any TLS library sees a byte (stage 05, --route-by-sni).
 *
 * Without Encrypted Client Hello the ClientHello travels in the clear, and
 * with it the server_name extension (RFC 6066 section 3): a dispatcher can
 * peek at it (recv MSG_PEEK), choose a worker, and hand the connection over
 * untouched, before the handshake. The parser takes the raw bytes of the
 * connection's first records as they are on the wire: a ClientHello may be
 * split over several records (RFC 8446 5.1) and over several TCP segments.
 *
 * Library code: no I/O, no allocation, every length checked against what
 * contains it.
 * See also: RFC 8446 4.1.2 (ClientHello) and 5.1 (records), RFC 6066 3.
 */
#ifndef SNI_H
#define SNI_H

#include <stddef.h>
#include <stdint.h>

#define SNI_MAX_HELLO 16384           /* a larger ClientHello is refused */
#define SNI_PEEK_CAP (2 * SNI_MAX_HELLO) /* wire bytes looked at, at most */
#define SNI_MAX_NAME 255              /* RFC 6066: a DNS host name */

enum sni_result {
	SNI_MORE,    /* the ClientHello is not all there yet: read more */
	SNI_FOUND,   /* name holds the host_name, NUL-terminated, *name_len bytes */
	SNI_ABSENT,  /* a whole ClientHello without a server_name */
	SNI_GARBAGE, /* not a ClientHello (*why says what is wrong) */
};

/* Reads the first host_name of the ClientHello that wire[0..len) starts
 * with. name must hold SNI_MAX_NAME + 1 bytes; the name is copied as sent
 * (any bytes but NUL: escape before printing). *why is set for SNI_GARBAGE
 * and SNI_MORE (what is missing). */
enum sni_result sni_parse(const uint8_t *wire, size_t len, char *name, size_t *name_len,
			  const char **why);

#endif
