# Stage 02: the parent<->worker channel.
$(eval $(call prog,02-socketpair/socketpair,02-socketpair/socketpair.c 02-socketpair/relay.c $(CHECKPOINT) $(COMMON)))
DEMOS += 02-socketpair/socketpair
TRACE_02_PROG := 02-socketpair/socketpair
TRACE_02_CALLS := socketpair,fork,clone,clone3,close,read,write,recv,recvfrom,send,sendto,shutdown
