# Stage 05's kernel TLS, run for real in a guest (05-ssl/README.md, "Kernel TLS").
#
#   make test-ktls    boot Debian's kernel (which has the tls module) under
#                     qemu; run tests/test_ktls.py inside, on this machine's
#                     binaries (its root is mounted read-only over 9p)
#   make bench-ktls   the same guest, measuring bulk sends (a markdown table)
#                     and stage 06's workers with and without kernel TLS
#
# Nothing is installed into /boot: the kernel package is unpacked into
# build-ktls/ (common/need.sh deb); the initramfs is built there too.
# `make test` runs test-ktls when qemu and the kernel can be had, and says in
# one line what is missing otherwise. With SAN=1 (make check) the guest runs
# the sanitizer build: the guest is the only place the kTLS code runs. Its
# bound is longer there: sanitized programs under an emulated CPU are slow.
.PHONY: need-ktls test-ktls bench-ktls ktls-if-possible bench-ktls-if-possible
KTLS_DIR := build-ktls
KTLS_KERNEL := $(KTLS_DIR)/kernel
KTLS_INITRD := $(KTLS_DIR)/initramfs.cpio.gz
KTLS_TIMEOUT ?= $(if $(filter 1,$(SAN)),300,170)

# busybox-static: the dynamic busybox has the same path, /bin/busybox
need-ktls:
	@$(NEED) cmd qemu-system-x86_64 qemu-system-x86
	@$(NEED) file /usr/share/doc/busybox-static busybox-static
	@$(NEED) deb linux-image-amd64 $(KTLS_KERNEL)

$(KTLS_INITRD): tests/ktls/mkinitramfs.py tests/ktls/init | need-ktls
	@py=$$($(NEED) python) && $$py tests/ktls/mkinitramfs.py $(KTLS_KERNEL) /bin/busybox $@

test-ktls: all need-test need-ktls $(KTLS_INITRD)
	@py=$$($(NEED) python) && SAN=$(SAN) $$py tests/ktls/guest.py --timeout $(KTLS_TIMEOUT) \
	    $(KTLS_KERNEL) $(KTLS_INITRD) test

bench-ktls: all need-ktls $(KTLS_INITRD)
	@$(NEED) cmd wrk wrk
	@py=$$($(NEED) python) && $$py tests/ktls/guest.py --timeout 400 \
	    $(KTLS_KERNEL) $(KTLS_INITRD) bench

# What `make test` calls (and `make bench` may: bench-ktls-if-possible): the
# guest when it can be had, one line naming what is missing when not.
define ktls_maybe
if why=$$($(MAKE) -s --no-print-directory need-ktls 2>&1 >/dev/null); then \
    $(MAKE) --no-print-directory $(1); \
else echo "make: kernel TLS $(2) not run (no guest): $$why" | head -n 1; fi
endef
ktls-if-possible:
	@$(call ktls_maybe,test-ktls,tests)
bench-ktls-if-possible:
	@$(call ktls_maybe,bench-ktls,bench)

# The bulk-send comparison (machinery, not a lesson): built with the stage.
KTLS_BENCH_SRC := 05-ssl/ktls_bench.c 05-ssl/record.c 05-ssl/handoff_state.c 05-ssl/tls_export.c \
	05-ssl/ktls.c $(COMMON)
$(eval $(call prog,05-ssl/ktls_bench,$(KTLS_BENCH_SRC),-lssl -lcrypto))
$(OUT)05-ssl/ktls_bench: | need-ssl-05

# ktls_install on a socket a first holder began (test machinery, run in the guest).
$(eval $(call prog,05-ssl/ktls_test,05-ssl/ktls_test.c 05-ssl/ktls.c $(COMMON),-lcrypto))
$(OUT)05-ssl/ktls_test: | need-ssl-05
