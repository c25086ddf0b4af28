# Stage 06's fuzz target (make fuzz-06; make fuzz runs it after stage 05's):
# the HTTP request parser, http.c. The rules live in 05-ssl/fuzz.mk.
.PHONY: fuzz-06
fuzz: fuzz-06
$(eval $(call fuzz_bin,06-prefork-server,fuzz_http,06-prefork-server/fuzz_http.c 06-prefork-server/http.c))
fuzz-06: build-fuzz/06-prefork-server/fuzz_http
	@mkdir -p build-fuzz/06-prefork-server/corpus-fuzz_http
	@printf 'GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET / HTTP/1.0\r\n\r\n' \
	    > build-fuzz/06-prefork-server/corpus-fuzz_http/seed-two
	@$(call fuzz_go,06-prefork-server,fuzz_http)
