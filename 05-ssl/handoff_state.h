/*
 * handoff_state.h - the TLS 1.3 session state that travels with a handed-off
 * descriptor, and its wire format (stage 05, after-handshake mode).
 *
 * The parent sends it in the same SOCK_SEQPACKET message as the descriptor,
 * so the two cannot be separated or reordered. The format is fixed and every
 * length is checked on the way in: a worker must not trust a message just
 * because it came from its parent (a bug there would otherwise become a
 * memory error here - the fuzz target fuzz_state.c hammers this decoder).
 *
 *   offset size
 *   0      4    magic "TLS3"
 *   4      1    format version, 1
 *   5      2    cipher suite (big-endian; 0x1301, 0x1302 or 0x1303)
 *   then twice, read direction (client -> server) first, then write:
 *          1    secret length (must be the suite's hash length: 32 or 48)
 *          n    traffic secret
 *          8    next record sequence number (big-endian, < 2^64-1)
 *   then   2    pending plaintext length (<= HS_MAX_PENDING)
 *          m    pending plaintext: bytes the parent's OpenSSL had already
 *               decrypted and nobody has answered yet
 *   nothing after that.
 *
 * Both directions use one suite in TLS 1.3, so it is sent once.
 * The caller wipes the encoded buffer and the struct (hs_wipe) after use.
 *
 * See also: RFC 8446 5.1 (what a direction's state is), unix(7) SOCK_SEQPACKET.
 */
#ifndef HANDOFF_STATE_H
#define HANDOFF_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "record.h"

/* Every length in the message is bounded by the buffer it lands in: a
 * secret by REC_MAX_SECRET (struct hs_dir), the pending plaintext by
 * HS_MAX_PENDING, which is also the size of the buffer a worker copies it
 * into (stage 05's line buffer, LINE_CAP == REC_MAX_PLAIN), so a worker
 * whose buffer holds HS_MAX_PENDING bytes can take any message hs_decode
 * accepts. It is one record's worth: the parent stops reading from
 * OpenSSL there (and refuses the handoff if OpenSSL still has more). */
#define HS_MAX_PENDING REC_MAX_PLAIN
#define HS_MAX_ENCODED (7 + 2 * (1 + REC_MAX_SECRET + 8) + 2 + HS_MAX_PENDING)

struct hs_dir {
	size_t secret_len;
	uint8_t secret[REC_MAX_SECRET];
	uint64_t seq;
};

struct handoff_state {
	uint16_t suite;
	struct hs_dir rd, wr;       /* read = what the client sends us */
	size_t pending_len;
	uint8_t pending[HS_MAX_PENDING];
};

/* Encodes s into out[0..cap): 0 and *len, or -1/EINVAL when s breaks a rule
 * above (the encoder refuses what the decoder would refuse), EMSGSIZE when
 * cap is too small. */
int hs_encode(const struct handoff_state *s, uint8_t *out, size_t cap, size_t *len);
/* Decodes exactly len bytes: 0, or -1/EBADMSG on anything malformed
 * (s is wiped then). */
int hs_decode(struct handoff_state *s, const uint8_t *in, size_t len);
/* OPENSSL_cleanse over the whole struct. */
void hs_wipe(struct handoff_state *s);

#endif
