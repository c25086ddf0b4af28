# Stage 07: zero-downtime upgrades. The listening socket and the idle
# keep-alive connections are passed from one generation to the next with
# stage 03's fdpass; requests are parsed with stage 06's http.c.
HR07_SRC := 07-hot-restart/hot_restart.c 07-hot-restart/server.c 07-hot-restart/strategies.c \
	07-hot-restart/demo.c 07-hot-restart/main.c 06-prefork-server/http.c $(FDPASS) $(COMMON)
$(eval $(call prog,07-hot-restart/hot_restart,$(HR07_SRC)))
DEMOS += 07-hot-restart/hot_restart
TRACE_07_PROG := 07-hot-restart/hot_restart
TRACE_07_CALLS := fork,clone,clone3,execve,socket,bind,listen,connect,accept4,sendmsg,recvmsg,close,kill
