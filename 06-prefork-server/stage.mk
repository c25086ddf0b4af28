# Stage 06: the capstone, a pre-forked server with a robust handoff. --tls uses
# stage 05's after-handshake handoff (tls_export, record layer, state codec).
SRV06_SRC := 06-prefork-server/handoff_server.c 06-prefork-server/http.c 05-ssl/tls_export.c \
	05-ssl/record.c 05-ssl/handoff_state.c $(FDPASS) $(COMMON)
$(eval $(call prog,06-prefork-server/handoff_server,$(SRV06_SRC),-lssl -lcrypto))
$(OUT)06-prefork-server/handoff_server: | need-ssl-05
DEMOS += 06-prefork-server/handoff_server
TRACE_06_PROG := 06-prefork-server/handoff_server
TRACE_06_CALLS := accept4,sendmsg,recvmsg,sendto,close,epoll_ctl,socketpair,wait4,kill
