# Unit tests of stage 05's record layer, session API and state codec (run by
# tests/test_05_record.py): the paths no client takes.
RECTEST05_SRC := 05-ssl/record_test.c 05-ssl/record.c 05-ssl/tls_export.c 05-ssl/handoff_state.c
$(eval $(call prog,05-ssl/record_test,$(RECTEST05_SRC),-lssl -lcrypto))
$(OUT)05-ssl/record_test: | need-ssl-05
