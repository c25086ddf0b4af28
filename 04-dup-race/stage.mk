# Stage 04: the dup/close ordering, the select race, the epoll trap.
# dup_race.c is the lesson; race.c forces the race; main.c is the command line.
DUP_RACE := 04-dup-race/dup_race.c 04-dup-race/race.c 04-dup-race/main.c 04-dup-race/watchset.c $(CHECKPOINT)
$(eval $(call prog,04-dup-race/dup_race,$(DUP_RACE) $(FDPASS) $(COMMON)))
DEMOS += 04-dup-race/dup_race
TRACE_04_PROG := 04-dup-race/dup_race
TRACE_04_CALLS := accept4,sendmsg,recvmsg,recvfrom,dup,close,select,pselect6,epoll_ctl,epoll_wait,epoll_pwait
TRACE_04_ARGS := --mode naive --connections 1
