# The fuzz targets. make fuzz: every target of every stage, one after another;
# make fuzz-05: stage 05's. libFuzzer with AddressSanitizer and
# UndefinedBehaviorSanitizer (clang only). Each target runs FUZZ_SECONDS
# (default 60) on its corpus, build-fuzz/STAGE/corpus-TARGET, which the next
# run starts from. A crash or sanitizer report stops the run with a non-zero
# status and leaves the input in build-fuzz/STAGE/crash-* (rerun it with
# build-fuzz/STAGE/TARGET FILE).
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS = -std=c11 -Wall -Wextra -Werror -g -O1 -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=all

# $(call fuzz_bin,STAGE,TARGET,SOURCES,LIBS): the rule for build-fuzz/STAGE/TARGET.
define fuzz_bin
build-fuzz/$(1)/$(2): $(3) $$(HEADERS) | fuzz-need-clang
	@mkdir -p $$(@D)
	clang $$(FUZZ_CFLAGS) -o $$@ $(3) $(4)
endef

# $(call fuzz_go,STAGE,TARGET): shell commands that run one target.
fuzz_go = echo "fuzzing $(2) for $(FUZZ_SECONDS) s"; mkdir -p build-fuzz/$(1)/corpus-$(2); \
	(cd build-fuzz/$(1) && ./$(2) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 corpus-$(2))

.PHONY: fuzz-need-clang fuzz-05
fuzz-need-clang:
	@$(NEED) cmd clang clang

# fuzz_record: record.c's opener on raw bytes; fuzz_read: a worker's read path
# against a scripted client (fuzz_script.c); fuzz_state: the state decoder,
# then a worker set up from what it decoded, driven by the same script.
FUZZ05_TARGETS := fuzz_record fuzz_read fuzz_state
FUZZ05_SESS := 05-ssl/fuzz_script.c 05-ssl/tls_export.c 05-ssl/handoff_state.c 05-ssl/record.c
$(eval $(call fuzz_bin,05-ssl,fuzz_record,05-ssl/fuzz_record.c 05-ssl/record.c,-lcrypto))
$(eval $(call fuzz_bin,05-ssl,fuzz_read,05-ssl/fuzz_read.c $(FUZZ05_SESS),-lssl -lcrypto))
$(eval $(call fuzz_bin,05-ssl,fuzz_state,05-ssl/fuzz_state.c $(FUZZ05_SESS),-lssl -lcrypto))

# Seeds, so the first seconds are not spent finding the format. A script
# (fuzz_script.c): 00 HI LO seal data; 01 KeyUpdate; 06 K deliver K bytes;
# 08 N read; 09 N the worker replies.
FUZZ05_SCRIPT := \000\001\000\006\040\010\377\001\000\000\020\206\001\000\010\020\011\004\010\377
fuzz-05: need-ssl-05 $(addprefix build-fuzz/05-ssl/,$(FUZZ05_TARGETS))
	@mkdir -p build-fuzz/05-ssl/corpus-fuzz_state build-fuzz/05-ssl/corpus-fuzz_read
	@printf '\002\001$(FUZZ05_SCRIPT)' > build-fuzz/05-ssl/corpus-fuzz_read/seed-script
	@{ printf 'TLS3\001\023\001\040'; head -c 40 /dev/zero; printf '\040'; head -c 40 /dev/zero; \
	   printf '\000\003abc'; } > build-fuzz/05-ssl/corpus-fuzz_state/seed-valid
	@{ printf 'TLS3\001\023\003\040'; head -c 40 /dev/zero; printf '\040'; head -c 40 /dev/zero; \
	   printf '\000\024$(FUZZ05_SCRIPT)'; } > build-fuzz/05-ssl/corpus-fuzz_state/seed-script
	@set -e; for t in $(FUZZ05_TARGETS); do $(call fuzz_go,05-ssl,$$t); done
