# make mutate: the lessons' mistakes put back into the real code, one at a
# time (mutate/catalogue.py); every one must make its stage's tests fail.
# Long (minutes): not part of `make test`, which only checks that every
# replacement in the catalogue still applies (tests/test_mutate_catalogue.py).
.PHONY: mutate
mutate: all
	@py=$$($(NEED) python) && $$py mutate/run.py $(MUTANTS)

.PHONY: clean-mutate
clean: clean-mutate
clean-mutate:
	rm -rf build-mutate
