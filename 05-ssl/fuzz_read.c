/*
 * fuzz_read.c - libFuzzer target for a worker's read path after a handoff
 * (tls_export.c's tlsx_in_room / tlsx_in_added / tlsx_read, record.c's
 * opener): a client seals records, KeyUpdates, empty records and alerts,
 * splits them at any point, puts garbage and flipped bits in between, and
 * the worker must hand out exactly the client's bytes or stop with the right
 * alert (fuzz_script.h says what is checked).
 *
 * Input: suite, the worker's rekey interval, then the script.
 * Build and run: make fuzz-05 [FUZZ_SECONDS=60].
 */
#define _GNU_SOURCE
#include "fuzz_script.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint16_t suites[3] = { SUITE_AES_128_GCM_SHA256, SUITE_AES_256_GCM_SHA384,
					    SUITE_CHACHA20_POLY1305_SHA256 };
	static struct tlsx_sess worker, client;
	if (size < 2)
		return 0;
	uint16_t suite = suites[data[0] % 3];
	size_t sl = rec_secret_len(suite);
	struct handoff_state st = { .suite = suite }, peer = { .suite = suite };
	st.rd.secret_len = st.wr.secret_len = peer.rd.secret_len = peer.wr.secret_len = sl;
	memset(st.rd.secret, 0x11, sl);
	memset(st.wr.secret, 0x22, sl);
	memcpy(peer.rd.secret, st.wr.secret, sl);
	memcpy(peer.wr.secret, st.rd.secret, sl);
	st.rd.seq = peer.wr.seq = data[0] >> 2;
	/* 0: the suite's own limit; otherwise a KeyUpdate every few records */
	if (tlsx_sess_init(&worker, &st, data[1] % 8) != 0 || tlsx_sess_init(&client, &peer, 0) != 0)
		abort();
	fuzz_script(&worker, &client, data + 2, size - 2);
	tlsx_sess_free(&worker);
	tlsx_sess_free(&client);
	return 0;
}
