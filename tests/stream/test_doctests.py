"""The examples in the docstrings of ``stream/`` are run as tests.

Every module under ``stream/`` (``stream.worker``, ``stream.ops``, ``stream.cli``,
``stream.devservers``) is imported and its examples run by :func:`doctest.testmod`, in one
child process on this checkout's sources (so an example's side effects, e.g. a metric
incremented, stay out of the test run), except the modules in :data:`EXCLUDED`, whose
import has side effects; a test checks that those have no examples to skip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.harness import REPO

#: modules not imported, and why (they must not have examples)
EXCLUDED = {
    "stream.cli.__main__": "runs the command line and exits the interpreter when imported",
    "stream.worker.app": "builds the Faust app from the environment and the config file "
    "when imported",
}


def module_name(path: Path) -> str:
    """``stream/worker/store.py`` -> ``stream.worker.store`` (a package: its name)."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


ALL_MODULES = sorted(module_name(p) for p in (REPO / "stream").rglob("*.py"))
MODULES = [m for m in ALL_MODULES if m not in EXCLUDED]

RUN_ALL = """
import contextlib, doctest, importlib, io, json, sys
results = {}
for name in sys.argv[1:]:
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    results[name] = [result.failed, result.attempted, report.getvalue()[-3000:]]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def results() -> dict[str, list]:
    done = subprocess.run(
        [sys.executable, "-c", RUN_ALL, *MODULES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, list] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_every_module_is_found() -> None:
    assert {"stream.worker.store", "stream.ops.metrics", "stream.cli.main"} <= set(MODULES)
    assert {"stream.devservers.servers", "stream.worker"} <= set(MODULES)
    assert set(EXCLUDED) <= set(ALL_MODULES), "an excluded module no longer exists"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, results: dict[str, list]) -> None:
    failed, _, report = results[name]
    assert failed == 0, f"{failed} docstring example(s) failed in {name}:\n{report}"


def test_the_stream_modules_have_examples(results: dict[str, list]) -> None:
    for name in (
        "stream.worker.profile_store",  # encode_top_factors / decode_top_factors
        "stream.worker.lanes",
        "stream.worker.collector",
        "stream.ops.metrics",
    ):
        assert results[name][1] > 0, f"no docstring example ran in {name}"


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_excluded_modules_have_no_examples(name: str) -> None:
    source = (REPO / Path(*name.split("."))).with_suffix(".py").read_text()
    assert ">>>" not in source, (
        f"{name} has docstring examples, but it is not imported here ({EXCLUDED[name]}): "
        "move the examples to a module without import side effects"
    )
