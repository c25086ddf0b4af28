/*
 * fuzz_state.c - libFuzzer target for the handoff-state decoder
 * (handoff_state.c): any input either is refused, or decodes to a state that
 * re-encodes to exactly the same bytes (the format has one encoding).
 *
 * Build and run: make fuzz-05 [FUZZ_SECONDS=60].
 */
#define _GNU_SOURCE
#include "handoff_state.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct handoff_state s;
	static uint8_t out[HS_MAX_ENCODED];
	if (hs_decode(&s, data, size) != 0)
		return 0;
	size_t len;
	if (hs_encode(&s, out, sizeof out, &len) != 0 || len != size || memcmp(out, data, size) != 0)
		abort();
	hs_wipe(&s);
	return 0;
}
