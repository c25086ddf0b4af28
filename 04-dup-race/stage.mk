# Stage 04: the dup/close ordering, the select race, the epoll trap.
$(eval $(call prog,04-dup-race/dup_race,04-dup-race/dup_race.c $(FDPASS) $(COMMON)))
DEMOS += 04-dup-race/dup_race
TRACE_04_PROG := 04-dup-race/dup_race
TRACE_04_CALLS := accept4,sendmsg,recvmsg,recvfrom,dup,close,select,pselect6,epoll_ctl,epoll_wait,epoll_pwait
TRACE_04_ARGS := --mode naive --connections 1
