# Stage 06: the capstone, a pre-forked server with a robust handoff.
$(eval $(call prog,06-prefork-server/handoff_server,06-prefork-server/handoff_server.c 06-prefork-server/http.c $(FDPASS) $(COMMON)))
DEMOS += 06-prefork-server/handoff_server
TRACE_06_PROG := 06-prefork-server/handoff_server
TRACE_06_CALLS := accept4,sendmsg,recvmsg,sendto,close,epoll_ctl,socketpair,wait4,kill
