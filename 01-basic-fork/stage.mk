# Stage 01: fork() inheritance.
CHECKPOINT := 01-basic-fork/checkpoint.c
$(eval $(call prog,01-basic-fork/basic_fork,01-basic-fork/basic_fork.c 01-basic-fork/demo_client.c $(CHECKPOINT) $(COMMON)))
DEMOS += 01-basic-fork/basic_fork
TRACE_01_PROG := 01-basic-fork/basic_fork
TRACE_01_CALLS := socket,listen,accept,accept4,connect,fork,clone,clone3,close,read,write,exit_group
