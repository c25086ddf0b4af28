# Stage 03: SCM_RIGHTS; fdpass.c is born here and reused by later stages.
# scm_rights.c is the lesson; the other files are the machinery around it.
SCM03 := $(addprefix 03-scm-rights/,scm_rights.c demo_subjects.c demo_breakit.c serve.c interop.c main.c)
$(eval $(call prog,03-scm-rights/scm_rights,$(SCM03) $(FDPASS) $(COMMON)))
DEMOS += 03-scm-rights/scm_rights
TRACE_03_PROG := 03-scm-rights/scm_rights
TRACE_03_CALLS := socketpair,fork,clone,clone3,accept,accept4,sendmsg,recvmsg,kcmp,dup,dup2,dup3,close
# Unit tests of fdpass.c (run by tests/test_03_scm_rights.py): the paths no demo reaches.
$(eval $(call prog,03-scm-rights/fdpass_test,03-scm-rights/fdpass_test.c $(FDPASS) common/util.c))
# What a 2015 reader could not know: newer kernels (the README's last sections).
$(eval $(call prog,03-scm-rights/newer_kernels,03-scm-rights/newer_kernels.c $(FDPASS) $(COMMON)))
