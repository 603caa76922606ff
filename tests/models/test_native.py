"""The compiled core (mypyc, see setup.py) computes exactly what the Python sources do."""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

import models
from tests.harness import REPO, run_core

#: Replays a data set through the core, explains its last scores in numpy and one by
#: one, and prints a digest of everything it produced (states, examples, model
#: versions, scores, factors, output messages) with the run's ``models.NATIVE``.
REPLAY = r"""
import hashlib, json
import models
from models.backtest import run_backtest
from models.config import load_config
from models.engine import Engine
from models.events import decode_event
from models.explain import explain_scores
from models.messages import encode_outcome
from models.outcome import Outcome
from models.synthetic import generate_events

config = load_config("customer-ai.toml")
lines = generate_events(profiles=400, days=150, seed=11)
result = run_backtest(lines, config, keep_scores=True)
digest = hashlib.sha256()
for pid in sorted(result.states):
    digest.update(pid.encode() + result.states[pid].to_bytes())
for e in result.examples:
    digest.update(repr((e.example_id, e.label, e.probability, e.features)).encode())
for m in result.models:
    digest.update(repr((m.goal, m.version, m.weights, m.mean, m.std, m.intercept,
                        m.calibration_a, m.calibration_b, m.base_rate)).encode())
digest.update(repr(result.score_log).encode())
# factors of the served models, batch (numpy) and one by one
engine = Engine(config, {m.goal: m for m in result.models})
out = Outcome()
states = {}
for raw in lines[-3000:]:
    event = decode_event(json.dumps(raw).encode())
    states[event.profile_id] = engine.process(states.get(event.profile_id), event, out)
one_by_one = [s.factors for s in out.scores]
explain_scores(out.scores)
digest.update(repr([s.factors for s in out.scores]).encode())
outbox = []
encode_outcome(out, "2026-01-01T00:00:00.000Z", ("scores", "segments", "training"), outbox)
digest.update(repr(outbox).encode())
print(json.dumps({
    "native": models.NATIVE,
    "digest": digest.hexdigest(),
    "scores": len(result.score_log),
    "examples": len(result.examples),
    "models": len(result.models),
    "factors_equal": one_by_one == [s.factors for s in out.scores],
}))
"""


@pytest.mark.skipif(
    not models.NATIVE,
    reason="the compiled core is not built (`pip install -e .` with a C compiler builds it)",
)
def test_compiled_core_replays_exactly_like_the_python_sources() -> None:
    interpreted = run_core(REPLAY, native=False)
    compiled = run_core(REPLAY, native=True)
    assert interpreted["native"] is False
    assert compiled["native"] is True
    # something was learnt and served, so the digest covers trained models and factors
    assert compiled["models"] > 0 and compiled["examples"] > 0
    assert compiled["factors_equal"] and interpreted["factors_equal"]
    assert compiled == {**interpreted, "native": True}


def _import_in_child(root: Path, module: str) -> subprocess.CompletedProcess[str]:
    """Import ``models.<module>`` from the copy of the package under ``root`` in a child
    that prints ``models.NATIVE`` and the module's ``WHERE``; the choice between compiled
    and source is left to the package (``CUSTOMER_AI_NATIVE`` unset)."""
    env = {k: v for k, v in os.environ.items() if k != "CUSTOMER_AI_NATIVE"}
    env["PYTHONPATH"] = str(root)
    code = f"import models, models.{module} as m; print(models.NATIVE, m.WHERE)"
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        cwd=root, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


def test_an_edited_source_is_never_shadowed_by_its_stale_build(tmp_path: Path) -> None:
    """A copy of the package whose recorded hash does not match imports pure Python."""
    package = tmp_path / "models"
    package.mkdir()
    (package / "__init__.py").write_text((REPO / "models" / "__init__.py").read_text())
    (package / "rounding.py").write_text("WHERE = 'source'\n")
    # a "compiled" rounding that would win the import if it were used
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package / f"rounding{suffix}").write_bytes(b"not a shared object")
    (package / "_native_sources.py").write_text('SHA256 = {"rounding": "0" * 64}\n')
    done = _import_in_child(tmp_path, "rounding")
    assert done.stdout.split() == ["False", "source"]
    assert "models/rounding.py changed since it was compiled" in done.stderr


def test_an_earlier_builds_extension_never_shadows_its_source(tmp_path: Path) -> None:
    """An extension of a module the last build did not compile (no longer native, say)
    turns the compiled core off: imported, it would run instead of the module's source."""
    package = tmp_path / "models"
    package.mkdir()
    (package / "__init__.py").write_text((REPO / "models" / "__init__.py").read_text())
    source = b"WHERE = 'source'\n"
    (package / "rounding.py").write_bytes(source)
    (package / "learner.py").write_bytes(source)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package / f"rounding{suffix}").write_bytes(b"not a shared object")
    (package / f"learner{suffix}").write_bytes(b"not a shared object")
    digest = hashlib.sha256(source).hexdigest()
    (package / "_native_sources.py").write_text(f'SHA256 = {{"rounding": "{digest}"}}\n')
    done = _import_in_child(tmp_path, "learner")
    assert done.stdout.split() == ["False", "source"]
    assert f"models/learner{suffix} is not of the last build" in done.stderr
