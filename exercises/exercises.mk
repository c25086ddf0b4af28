# exercises/exercises.mk - graded exercises (exercises/README.md).
#
#   make exercise-03 (04, 06, 07)   build that stage with the student's file
#                  (exercises/NN-*/) in build-exercise/NN/, then run the
#                  stage's tests of the lesson against it, told as sentences
#   make exercise-NN USE=reference  the same with the stage's own file
#                  (in build-exercise/NN-reference/): it passes
#   FIRST=1        stop at the first failing test
#   SAN=1          the sanitizer build of the same (build-exercise/NN/build-asan/)
#
# exercises/grade.py does the work; the reference binaries are never touched.

.PHONY: clean-exercises
exercise-%: need-cc need-test
	@py=$$($(NEED) python) && SAN=$(SAN) $$py exercises/grade.py $* \
	    $(if $(USE),--use $(USE)) $(if $(filter 1,$(FIRST)),--first)

clean: clean-exercises
clean-exercises:
	rm -rf build-exercise
