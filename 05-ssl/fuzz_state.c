/*
 * fuzz_state.c - libFuzzer target for the handoff-state decoder
 * (handoff_state.c) and for what a worker does with a decoded state.
 *
 * Any input either is refused, or decodes to a state that re-encodes to
 * exactly the same bytes (the format has one encoding). A decoded state
 * then sets up a worker's session (tlsx_sess_init) and a client's with the
 * directions swapped, and the pending plaintext - up to HS_MAX_PENDING bytes
 * the fuzzer controls - is played as a client script against the worker
 * (fuzz_script.h): suites, secrets and sequence numbers right up to 2^64-2
 * all come from the fuzzer.
 *
 * Build and run: make fuzz-05 [FUZZ_SECONDS=60].
 */
#define _GNU_SOURCE
#include "fuzz_script.h"
#include "handoff_state.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct handoff_state s, peer;
	static uint8_t out[HS_MAX_ENCODED], script[HS_MAX_PENDING];
	static struct tlsx_sess worker, client;
	if (hs_decode(&s, data, size) != 0)
		return 0;
	size_t len;
	if (hs_encode(&s, out, sizeof out, &len) != 0 || len != size || memcmp(out, data, size) != 0)
		abort();
	if (s.pending_len > HS_MAX_PENDING)
		abort();

	/* The worker's use of it. tlsx_sess_init wipes what it is given. */
	peer = s;
	peer.rd = s.wr;
	peer.wr = s.rd;
	size_t n = s.pending_len;
	memcpy(script, s.pending, n);
	if (tlsx_sess_init(&worker, &s, 0) != 0 || tlsx_sess_init(&client, &peer, 0) != 0)
		abort(); /* the decoder accepted it: the record layer must take it */
	fuzz_script(&worker, &client, script, n);
	tlsx_sess_free(&worker);
	tlsx_sess_free(&client);
	return 0;
}
