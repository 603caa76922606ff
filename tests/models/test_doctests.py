"""The examples in the docstrings of ``models/`` are run as tests.

They run on the Python sources (``CUSTOMER_AI_NATIVE=0``, in a child process): doctest
finds no examples in a module compiled by mypyc. tests/models/test_native.py checks that
the compiled modules compute what the sources do.
"""

from __future__ import annotations

import pkgutil

import pytest

import models
from tests.harness import run_core

MODULES = sorted(m.name for m in pkgutil.iter_modules(models.__path__, "models."))

RUN_ALL = """
import doctest, importlib, json, sys
import models
assert not models.NATIVE
results = {}
for name in sys.argv[1:]:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    results[name] = [result.failed, result.attempted]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def results() -> dict[str, list[int]]:
    return run_core(RUN_ALL, *MODULES, native=False)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, results: dict[str, list[int]]) -> None:
    failed, _ = results[name]
    assert failed == 0, f"{failed} docstring example(s) failed in {name}"


def test_the_core_modules_have_examples(results: dict[str, list[int]]) -> None:
    core = ("engine", "explain", "factors", "messages", "outcome", "profile", "rounding")
    for name in (f"models.{module}" for module in core):
        assert results[name][1] > 0, f"no docstring example ran in {name}"
