/*
 * sni_check.c - sni_parse() from the outside: raw bytes on stdin, its
 * verdict on stdout (tests/test_05_ssl.py feeds it ClientHellos whole, cut
 * short, re-framed into several records, without server_name, and garbage).
 *
 * Run it:  ./sni_check < hello.bin
 * Prints one line: "found NAME" (escaped), "absent", "more: WHAT" or
 * "garbage: WHY". Exit 0; 2 on a usage error.
 * See also: sni.h, RFC 8446 4.1.2, RFC 6066 3.
 */
#define _GNU_SOURCE
#include "../common/escape.h"
#include "sni.h"

#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	(void)argv;
	if (argc != 1) {
		fprintf(stderr, "usage: sni_check < BYTES\n");
		return 2;
	}
	static uint8_t wire[SNI_PEEK_CAP];
	size_t len = 0;
	ssize_t r;
	while (len < sizeof wire && (r = read(0, wire + len, sizeof wire - len)) > 0)
		len += (size_t)r;
	char name[SNI_MAX_NAME + 1], shown[ESCAPED_CAP(SNI_MAX_NAME)];
	size_t name_len = 0;
	const char *why;
	switch (sni_parse(wire, len, name, &name_len, &why)) {
	case SNI_FOUND:
		printf("found %s\n", escape_bytes(shown, sizeof shown, name, name_len, ESCAPE_SPACE));
		break;
	case SNI_ABSENT:
		printf("absent\n");
		break;
	case SNI_MORE:
		printf("more: %s\n", why);
		break;
	default:
		printf("garbage: %s\n", why);
	}
	return 0;
}
