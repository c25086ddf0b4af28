# common/faultinj.so: the fault-injection shim the tests preload (LD_PRELOAD)
# to reach the paths only a failing kernel call reaches. Built without the
# sanitizers even for `make check`: it is test machinery, and it must not
# bring a second sanitizer runtime into an instrumented program.
FAULTINJ_SO := common/faultinj.so
PROGS += $(FAULTINJ_SO)
$(FAULTINJ_SO): common/faultinj.c
	$(CC) -std=c11 -Wall -Wextra -Wpedantic -Werror -O2 -g -fPIC -shared -o $@ $< -ldl
