# bench/: side-by-side measurements (make bench). Not a stage: no demo.
$(eval $(call prog,bench/fdpass_bench,bench/fdpass_bench.c $(FDPASS) $(COMMON)))

.PHONY: bench bench-profile need-bench
# Runs the measurements (about five minutes, and about two more for the kernel-TLS
# guest when qemu can run), writes bench/RESULTS.md, prints it.
# wrk drives the HTTP servers; openssl s_time the TLS ones (stage 05); nginx
# (Debian's nginx-light) is the reference server, run from a temporary
# directory by bench/run.py, never as a system service.
bench: all need-bench
	@py=$$($(NEED) python) && $$py bench/run.py
	@{ printf '\n## Kernel TLS: bulk sends and stage 06 in a qemu guest (make bench-ktls)\n\n'; \
	   printf 'The host kernel has no TLS; 05-ssl/README.md explains the guest.\n\n```text\n'; \
	   $(MAKE) -s --no-print-directory bench-ktls-if-possible 2>&1; printf '```\n'; } \
	 | tee -a bench/RESULTS.md

# System calls and CPU time per request, handoff against nginx (bench/profile.py);
# perf (Debian's linux-perf) counts the calls and samples the CPU.
bench-profile: all need-bench
	@$(NEED) cmd perf linux-perf
	@py=$$($(NEED) python) && $$py bench/profile.py --perf

need-bench:
	@$(NEED) cmd wrk wrk
	@$(NEED) cmd openssl openssl
	@$(NEED) file /usr/sbin/nginx nginx-light

# tests/test_bench_config.py starts nginx with bench/nginx.conf.in.
need-test: need-bench
