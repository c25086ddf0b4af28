"""`make mutate` is long, so it is not part of `make test`; but a refactor
must not silently retire its catalogue. Every mutant's replacement must still
apply: its text occurs exactly once in the file it names, and the tests it
names exist."""

import importlib.util

import pytest

from conftest import ROOT


def _load(name, path):
    """A module by its path, under a name of its own: bench/run.py is also
    a module called "run", and tests/test_bench_config.py imports it first."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mutate_run = _load("mutate_run", ROOT / "mutate" / "run.py")
MUTANTS = mutate_run.MUTANTS


def test_catalogue_is_large_and_ids_are_unique():
    ids = [m["id"] for m in MUTANTS]
    assert len(ids) >= 30
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("m", MUTANTS, ids=[m["id"] for m in MUTANTS])
def test_mutant_still_applies(m):
    assert m["new"] != m["old"]
    why = mutate_run.applies(m)
    assert why is None, f"mutant {m['id']}: {why}"
    for t in m["tests"]:
        assert (ROOT / t.split("::", 1)[0]).exists(), f"mutant {m['id']}: no test file {t}"
