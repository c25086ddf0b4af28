/*
 * escape.c - bytes from the network, made safe to print (see escape.h).
 */
#include "escape.h"

char *escape_bytes(char *dst, size_t cap, const void *src, size_t len, int flags)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = src;
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = s[i];
		int plain = c > 0x20 && c < 0x7f && c != '\\';
		if (c == ' ' && !(flags & ESCAPE_SPACE))
			plain = 1;
		if (plain) {
			if (n + 1 >= cap)
				break;
			dst[n++] = (char)c;
		} else {
			if (n + 4 >= cap)
				break;
			dst[n++] = '\\';
			dst[n++] = 'x';
			dst[n++] = hex[c >> 4];
			dst[n++] = hex[c & 15];
		}
	}
	dst[n] = '\0';
	return dst;
}
