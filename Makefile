# Makefile - every command of the repository (README.md, "Quick start").
#
#   make            build every stage (in place: 01-basic-fork/basic_fork, ...)
#   make demo       build, then run each stage's narrated demo in order
#   make test       build, then run the pytest suite (tests/)
#   make check      the same suite against a sanitizer build (build-asan/)
#   make trace-NN   run stage NN's demo under strace, showing only its syscalls
#   make fuzz       libFuzzer on stage 05's parsers, FUZZ_SECONDS each (default 60)
#   make bench      the benchmarks; writes bench/RESULTS.md
#   make lesson-NN  print stage NN's lesson excerpts (file:line)
#   make clean
#
# Missing tools come from Debian's packages: common/need.sh installs them
# when run as root on Debian, and otherwise prints the command to run.

CC ?= cc
CFLAGS ?= -O2 -g
ALLCFLAGS = -std=c11 -Wall -Wextra -Wpedantic -Werror $(CFLAGS)

# SAN=1 (what `make check` uses): AddressSanitizer + UndefinedBehaviorSanitizer,
# into a separate tree so the two builds never mix.
ifeq ($(SAN),1)
OUT := build-asan/
CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
else
OUT :=
endif

NEED := common/need.sh
COMMON := common/narrate.c common/util.c common/cli.c common/escape.c
FDPASS := 03-scm-rights/fdpass.c
HEADERS := $(wildcard common/*.h */*.h)
PROGS :=

# $(call prog,PATH,SOURCES[,LIBS]) - the rule that links one stage binary.
define prog
PROGS += $(OUT)$(1)
$(OUT)$(1): $(2) $$(HEADERS)
	@mkdir -p $$(@D)
	$$(CC) $$(ALLCFLAGS) -o $$@ $(2) $(3)
endef

# Each stage says what it builds.
include $(sort $(wildcard */stage.mk))
# Further rules a stage keeps apart from its build (05-ssl/fuzz.mk, ...).
include $(sort $(filter-out $(wildcard */stage.mk),$(wildcard */*.mk)))

.PHONY: all demo test check clean need-cc need-test fuzz
.DEFAULT_GOAL := all

all: need-cc $(PROGS)

need-cc:
	@$(NEED) cmd $(firstword $(CC)) $(if $(findstring clang,$(CC)),clang,gcc)

# DEMOS is filled by the stage.mk files, in stage order.
demo: all
	@set -e; for d in $(DEMOS); do \
	    printf '\n==== %s ====\n' "$$d"; ./$$d; \
	done

# The real peers the tests talk to, each from its Debian package.
TEST_TOOLS := strace:strace openssl:openssl curl:curl wrk:wrk
need-test:
	@for t in $(TEST_TOOLS); do $(NEED) cmd $${t%%:*} $${t#*:} || exit 1; done
	@$(NEED) file /usr/lib/python3/dist-packages/cryptography/__init__.py python3-cryptography

PYTEST_ARGS ?=
test: all need-test
	@py=$$($(NEED) python) && SAN=$(SAN) $$py -m pytest -q $(PYTEST_ARGS) tests
	@$(MAKE) --no-print-directory SAN=$(SAN) ktls-if-possible

# Every sanitizer report goes to build-asan/san.*; any such file fails the run
# (a report in a child that the tests did not look at must not pass unseen).
check:
	@rm -rf build-asan/san.*
	$(MAKE) SAN=1 all
	@ASAN_OPTIONS=log_path=$(CURDIR)/build-asan/san:detect_leaks=1:abort_on_error=0:exitcode=99 \
	 UBSAN_OPTIONS=log_path=$(CURDIR)/build-asan/san:print_stacktrace=1:halt_on_error=1 \
	 $(MAKE) SAN=1 test; st=$$?; \
	 if ls build-asan/san.* >/dev/null 2>&1; then \
	     echo "sanitizer reports:"; cat build-asan/san.*; exit 1; fi; exit $$st

# trace-NN: TRACE_NN (set in the stage.mk) is the stage's binary and the
# syscalls its lesson is about.
trace-%: all
	@$(NEED) cmd strace strace
	strace -f -qq -e trace=$(TRACE_$*_CALLS) ./$(TRACE_$*_PROG) $(TRACE_$*_ARGS)

fuzz: fuzz-05

# lesson-NN: the lines of stage NN marked /* lesson: NAME */ ... /* end lesson */,
# each with its file:line (common/lesson.py; the README quotes the same lines).
lesson-%:
	@py=$$(command -v python3 || echo /usr/bin/python3); $$py common/lesson.py $(wildcard $*-*)

clean:
	rm -rf build-asan build-fuzz build-ktls $(PROGS) tests/__pycache__ .pytest_cache
