# bench/: side-by-side measurements (make bench). Not a stage: no demo.
$(eval $(call prog,bench/fdpass_bench,bench/fdpass_bench.c $(FDPASS) $(COMMON)))

.PHONY: bench
# Runs the measurements (under 2 minutes), writes bench/RESULTS.md, prints it.
# wrk drives the HTTP servers; openssl s_time the TLS ones (stage 05).
bench: all
	@$(NEED) cmd wrk wrk
	@$(NEED) cmd openssl openssl
	@py=$$($(NEED) python) && $$py bench/run.py
