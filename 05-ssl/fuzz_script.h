/*
 * fuzz_script.h - the part of stage 05's fuzz targets that plays a client
 * against a worker's session (tls_export.h), driven by fuzzer bytes.
 *
 * The bytes are a script: seal application data of some length, seal a
 * KeyUpdate, an empty record or an alert, put raw garbage on the wire, flip
 * a bit of what is in flight, hand the worker the next k bytes of the wire
 * (records split at any point), let it read into a buffer of any size. The
 * worker reads through tlsx_in_room / tlsx_in_added / tlsx_read exactly as
 * stage 06's workers do, and the runner checks what it can know:
 *   - while nothing was tampered with, the worker hands out exactly the bytes
 *     the client sealed, in order, and fails only where the rules say
 *     (TLSX_MAX_EMPTY_RECORDS records in a row without data, an alert);
 *   - whatever the bytes, nothing reads or writes out of bounds
 *     (AddressSanitizer), and tlsx_buffered never says "nothing to do" while
 *     tlsx_read would in fact hand out bytes or an event without new input.
 * A violated check calls abort(): libFuzzer keeps the input.
 *
 * Build and run: make fuzz-05 [FUZZ_SECONDS=60].
 */
#ifndef FUZZ_SCRIPT_H
#define FUZZ_SCRIPT_H

#include <stddef.h>
#include <stdint.h>

#include "tls_export.h"

/* Runs the script ops[0..n) with client sealing towards worker (the two
 * sessions share keys with their directions swapped). Both stay set up; the
 * caller frees them. */
void fuzz_script(struct tlsx_sess *worker, struct tlsx_sess *client, const uint8_t *ops, size_t n);

#endif
