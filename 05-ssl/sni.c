/*
 * sni.c - the server_name of a ClientHello, from raw records (see sni.h).
 */
#include "sni.h"

#include <string.h>

/* A read cursor over a byte range: every take checks what is left. */
struct cur {
	const uint8_t *p;
	size_t left;
};

static int take(struct cur *c, size_t n, const uint8_t **out)
{
	if (n > c->left)
		return -1;
	if (out)
		*out = c->p;
	c->p += n;
	c->left -= n;
	return 0;
}

static int take_num(struct cur *c, size_t bytes, size_t *v)
{
	const uint8_t *p;
	if (take(c, bytes, &p) < 0)
		return -1;
	*v = 0;
	for (size_t i = 0; i < bytes; i++)
		*v = *v << 8 | p[i];
	return 0;
}

/* A vector with a length prefix of `bytes` bytes, as a cursor of its own. */
static int take_vec(struct cur *c, size_t bytes, struct cur *vec)
{
	size_t n;
	if (take_num(c, bytes, &n) < 0 || take(c, n, &vec->p) < 0)
		return -1;
	vec->left = n;
	return 0;
}

/* The server_name extension's body: the first host_name entry. */
static enum sni_result server_name(struct cur ext, char *name, size_t *name_len, const char **why)
{
	struct cur list;
	if (take_vec(&ext, 2, &list) < 0 || ext.left != 0 || list.left == 0) {
		*why = "a malformed server_name extension";
		return SNI_GARBAGE;
	}
	while (list.left > 0) {
		size_t type;
		struct cur host;
		if (take_num(&list, 1, &type) < 0 || take_vec(&list, 2, &host) < 0) {
			*why = "a malformed server_name list";
			return SNI_GARBAGE;
		}
		if (type != 0) /* only host_name (0) is defined */
			continue;
		if (host.left == 0 || host.left > SNI_MAX_NAME || memchr(host.p, 0, host.left)) {
			*why = "a host_name that is empty, longer than 255 bytes or holds a NUL";
			return SNI_GARBAGE;
		}
		memcpy(name, host.p, host.left);
		name[host.left] = '\0';
		*name_len = host.left;
		return SNI_FOUND;
	}
	return SNI_ABSENT;
}

enum sni_result sni_parse(const uint8_t *wire, size_t len, char *name, size_t *name_len,
			  const char **why)
{
	/* Reassemble the handshake message from the payloads of whole records. */
	uint8_t msg[4 + SNI_MAX_HELLO];
	size_t have = 0, need = 0, off = 0;
	*why = "";
	while (need == 0 || have < need) {
		if (len - off < 5) {
			*why = "a record header";
			return SNI_MORE;
		}
		const uint8_t *h = wire + off;
		size_t rl = (size_t)h[3] << 8 | h[4];
		if (h[0] != 22) {
			*why = "the first record is not a handshake record (type 22)";
			return SNI_GARBAGE;
		}
		if (h[1] != 3 || rl == 0 || rl > 16384) {
			*why = "a record header with a bad version or length";
			return SNI_GARBAGE;
		}
		if (len - off - 5 < rl) {
			*why = "the rest of a record";
			return SNI_MORE;
		}
		size_t k = rl < sizeof msg - have ? rl : sizeof msg - have;
		memcpy(msg + have, h + 5, k);
		have += k;
		off += 5 + rl;
		if (need == 0 && have >= 4) {
			if (msg[0] != 1) {
				*why = "the first handshake message is not a ClientHello";
				return SNI_GARBAGE;
			}
			need = 4 + ((size_t)msg[1] << 16 | (size_t)msg[2] << 8 | msg[3]);
			if (need > sizeof msg) {
				*why = "a ClientHello larger than 16 KiB";
				return SNI_GARBAGE;
			}
		}
	}
	/* RFC 8446 4.1.2: version, random, session id, suites, compression, then
	 * (optional before TLS 1.3) the extensions. */
	struct cur c = { msg + 4, need - 4 }, skip, exts;
	if (take(&c, 2 + 32, NULL) < 0 || take_vec(&c, 1, &skip) < 0 || take_vec(&c, 2, &skip) < 0 ||
	    take_vec(&c, 1, &skip) < 0) {
		*why = "a ClientHello cut short";
		return SNI_GARBAGE;
	}
	if (c.left == 0)
		return SNI_ABSENT;
	if (take_vec(&c, 2, &exts) < 0 || c.left != 0) {
		*why = "a malformed extensions block";
		return SNI_GARBAGE;
	}
	while (exts.left > 0) {
		size_t type;
		struct cur body;
		if (take_num(&exts, 2, &type) < 0 || take_vec(&exts, 2, &body) < 0) {
			*why = "a malformed extension";
			return SNI_GARBAGE;
		}
		if (type == 0) /* server_name */
			return server_name(body, name, name_len, why);
	}
	return SNI_ABSENT;
}
