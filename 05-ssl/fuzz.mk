# Stage 05's fuzz targets (make fuzz, make fuzz-05).
.PHONY: fuzz-05
# make fuzz-05 [FUZZ_SECONDS=60]: libFuzzer (clang) on the record opener and
# the handoff-state decoder, each for FUZZ_SECONDS. Any crash or sanitizer
# report stops the run with a non-zero status and leaves the input in
# build-fuzz/05-ssl/.
FUZZ_SECONDS ?= 60
FUZZ05_CFLAGS = -std=c11 -Wall -Wextra -Werror -g -O1 -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=all
FUZZ05_TARGETS := fuzz_record fuzz_state
fuzz-05: need-ssl-05
	@$(NEED) cmd clang clang
	@mkdir -p build-fuzz/05-ssl
	clang $(FUZZ05_CFLAGS) -o build-fuzz/05-ssl/fuzz_record 05-ssl/fuzz_record.c 05-ssl/record.c -lcrypto
	clang $(FUZZ05_CFLAGS) -o build-fuzz/05-ssl/fuzz_state 05-ssl/fuzz_state.c 05-ssl/handoff_state.c \
	    05-ssl/record.c -lcrypto
	@set -e; for t in $(FUZZ05_TARGETS); do \
	    echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
	    mkdir -p build-fuzz/05-ssl/corpus-$$t; \
	    if [ $$t = fuzz_state ]; then \
	        { printf 'TLS3\001\023\001\040'; head -c 40 /dev/zero; printf '\040'; head -c 40 /dev/zero; \
	          printf '\000\003abc'; } > build-fuzz/05-ssl/corpus-$$t/seed-valid; fi; \
	    (cd build-fuzz/05-ssl && ./$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        corpus-$$t); \
	done
