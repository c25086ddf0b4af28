/*
 * handoff_state.c - encoder and strict decoder for handoff_state.h.
 * Every read is preceded by a check of how many bytes are left.
 */
#define _GNU_SOURCE
#include "handoff_state.h"

#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>

static const uint8_t magic[4] = { 'T', 'L', 'S', '3' };

static int valid(const struct handoff_state *s)
{
	size_t want = rec_secret_len(s->suite);
	return want && s->rd.secret_len == want && s->wr.secret_len == want &&
	       s->rd.seq != UINT64_MAX && s->wr.seq != UINT64_MAX && s->pending_len <= HS_MAX_PENDING;
}

static void put_be(uint8_t *p, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

static uint64_t get_be(const uint8_t *p, int bytes)
{
	uint64_t v = 0;
	for (int i = 0; i < bytes; i++)
		v = v << 8 | p[i];
	return v;
}

int hs_encode(const struct handoff_state *s, uint8_t *out, size_t cap, size_t *len)
{
	if (!valid(s)) {
		errno = EINVAL;
		return -1;
	}
	size_t need = 7 + 2 * (1 + s->rd.secret_len + 8) + 2 + s->pending_len;
	if (cap < need) {
		errno = EMSGSIZE;
		return -1;
	}
	size_t i = 0;
	memcpy(out, magic, 4);
	i += 4;
	out[i++] = 1;
	put_be(out + i, s->suite, 2);
	i += 2;
	const struct hs_dir *dirs[2] = { &s->rd, &s->wr };
	for (int k = 0; k < 2; k++) {
		out[i++] = (uint8_t)dirs[k]->secret_len;
		memcpy(out + i, dirs[k]->secret, dirs[k]->secret_len);
		i += dirs[k]->secret_len;
		put_be(out + i, dirs[k]->seq, 8);
		i += 8;
	}
	put_be(out + i, s->pending_len, 2);
	i += 2;
	if (s->pending_len)
		memcpy(out + i, s->pending, s->pending_len);
	*len = i + s->pending_len;
	return 0;
}

int hs_decode(struct handoff_state *s, const uint8_t *in, size_t len)
{
	memset(s, 0, sizeof *s);
	size_t i = 0;
#define NEED(n)                        \
	do {                           \
		if (len - i < (n))     \
			goto bad;      \
	} while (0)
	NEED(7);
	if (memcmp(in, magic, 4) != 0 || in[4] != 1)
		goto bad;
	s->suite = (uint16_t)get_be(in + 5, 2);
	i = 7;
	size_t want = rec_secret_len(s->suite);
	if (!want)
		goto bad;
	struct hs_dir *dirs[2] = { &s->rd, &s->wr };
	for (int k = 0; k < 2; k++) {
		NEED(1);
		if (in[i] != want)
			goto bad;
		i++;
		NEED(want + 8);
		dirs[k]->secret_len = want;
		memcpy(dirs[k]->secret, in + i, want);
		i += want;
		dirs[k]->seq = get_be(in + i, 8);
		i += 8;
	}
	NEED(2);
	s->pending_len = (size_t)get_be(in + i, 2);
	i += 2;
	if (s->pending_len > HS_MAX_PENDING || len - i != s->pending_len)
		goto bad; /* short, or trailing bytes: both mean we misread something */
	memcpy(s->pending, in + i, s->pending_len);
	if (!valid(s))
		goto bad;
	return 0;
#undef NEED
bad:
	hs_wipe(s);
	errno = EBADMSG;
	return -1;
}

void hs_wipe(struct handoff_state *s)
{
	OPENSSL_cleanse(s, sizeof *s);
}
