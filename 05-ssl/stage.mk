# Stage 05: handing off TLS connections (OpenSSL 3 from Debian's libssl-dev).
SSL05_SRC := 05-ssl/ssl_handoff.c 05-ssl/lines.c 05-ssl/worker_record.c 05-ssl/worker_ktls.c \
	05-ssl/pool.c 05-ssl/dispatch.c 05-ssl/sni.c 05-ssl/demo.c 05-ssl/main.c 05-ssl/selftest.c 05-ssl/record.c 05-ssl/handoff_state.c \
	05-ssl/ktls.c 05-ssl/tls_export.c $(FDPASS) $(COMMON)
$(eval $(call prog,05-ssl/ssl_handoff,$(SSL05_SRC),-lssl -lcrypto))
# The headers must be there before the compiler looks (order-only: no rebuilds).
$(OUT)05-ssl/ssl_handoff: | need-ssl-05
DEMOS += 05-ssl/ssl_handoff
TRACE_05_PROG := 05-ssl/ssl_handoff
TRACE_05_CALLS := socketpair,fork,clone,clone3,accept,accept4,sendmsg,recvmsg,read,write,close,setsockopt
TRACE_05_ARGS := --mode after-handshake

.PHONY: need-ssl-05
need-ssl-05:
	@$(NEED) file /usr/include/openssl/ssl.h libssl-dev


# sni_parse() alone, for the tests: bytes on stdin, the verdict on stdout.
$(eval $(call prog,05-ssl/sni_check,05-ssl/sni_check.c 05-ssl/sni.c common/escape.c,))
