# Stage 06: the capstone, a pre-forked server with a robust handoff. The
# lesson is handoff_server.c; the rest is machinery (server.h lists it).
# --tls uses stage 05's after-handshake handoff (tls_export, record layer,
# state codec).
SRV06_SRC := $(addprefix 06-prefork-server/,handoff_server.c dispatcher.c worker.c models.c \
	tls_dispatch.c demo.c main.c http.c) 05-ssl/tls_export.c 05-ssl/record.c 05-ssl/ktls.c \
	05-ssl/handoff_state.c $(FDPASS) $(COMMON)
$(eval $(call prog,06-prefork-server/handoff_server,$(SRV06_SRC),-lssl -lcrypto))
$(OUT)06-prefork-server/handoff_server: | need-ssl-05
DEMOS += 06-prefork-server/handoff_server
TRACE_06_PROG := 06-prefork-server/handoff_server
TRACE_06_CALLS := accept4,sendmsg,recvmsg,sendto,close,epoll_ctl,socketpair,wait4,kill
