# Stage 03: SCM_RIGHTS; fdpass.c is born here and reused by later stages.
$(eval $(call prog,03-scm-rights/scm_rights,03-scm-rights/scm_rights.c $(FDPASS) $(COMMON)))
DEMOS += 03-scm-rights/scm_rights
TRACE_03_PROG := 03-scm-rights/scm_rights
TRACE_03_CALLS := socketpair,fork,clone,clone3,accept,accept4,sendmsg,recvmsg,kcmp,dup,dup2,dup3,close
# Unit tests of fdpass.c (run by tests/test_03_scm_rights.py): the paths no demo reaches.
$(eval $(call prog,03-scm-rights/fdpass_test,03-scm-rights/fdpass_test.c $(FDPASS) common/util.c))
