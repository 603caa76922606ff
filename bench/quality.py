"""Online model quality against a batch gradient-boosted model on the same examples.

Runs the backtest (the same core as ``customer-ai evaluate``), then per goal sorts the
matured examples by ``prediction_time``, trains scikit-learn's
``HistGradientBoostingClassifier`` on the first 70 % and compares, on the last 30 %,
the ROC AUC of the batch model with the AUC of the probabilities the online model
actually *served* on the same rows (prequential: each was served before its label was
known). ``ece`` is the expected calibration error of those served probabilities;
``ece_if_calibrated`` is the median and 90th percentile of the ECE that a perfectly
calibrated server of the same probabilities would show on as many examples (labels drawn
from the probabilities, 200 draws): the noise floor of ``ece`` (on about 1,000 examples
it is about 0.03 by itself).

Examples served no probability (a cold goal without a ``prior`` serves null) are left
out. Only examples whose window had closed by the end of the replay are compared: near the
end, an ``occurs`` goal's positives mature early (the goal event arrived) while its
negatives are still pending, so including them would bias the labels of the last rows
towards one class (see :func:`models.report.closed_window_examples`).

Usage::

    python bench/quality.py EVENTS.jsonl --config customer-ai.toml

The last line printed is one JSON object
``{goal: {"online_auc", "batch_auc", "ratio", "ece", "n_train", "n_test", ...}}``.
Targets (issue 3): ``ratio >= 0.97`` and ``ece <= 0.05`` for every goal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.backtest import run_backtest
from models.config import load_config
from models.metrics import expected_calibration_error, roc_auc
from models.outcome import Example
from models.report import closed_window_examples

TRAIN_FRACTION = 0.7


def split_by_time(
    examples: list[Example], fraction: float = TRAIN_FRACTION
) -> tuple[list[Example], list[Example]]:
    """Sort by (prediction time, example id) and cut at ``fraction``."""
    ordered = sorted(examples, key=lambda e: (e.prediction_ts, e.example_id))
    cut = int(len(ordered) * fraction)
    return ordered[:cut], ordered[cut:]


def calibrated_ece(served: list[float], draws: int = 200, seed: int = 0) -> list[float]:
    """Median and 90th percentile of the ECE of a perfectly calibrated server of ``served``
    (each label drawn from its probability): the noise floor of a measured ECE."""
    rng = np.random.default_rng(seed)
    p = np.asarray(served, dtype=float)
    eces = [
        expected_calibration_error(served, (rng.random(len(p)) < p).astype(int).tolist())
        for _ in range(draws)
    ]
    return [round(float(np.median(eces)), 4), round(float(np.percentile(eces, 90)), 4)]


def compare_goal(examples: list[Example], seed: int = 0) -> dict[str, Any]:
    """Online (served) against batch AUC on the last 30 % of one goal's examples."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    train, test = split_by_time(examples)
    y_train = np.array([e.label for e in train])
    y_test = [e.label for e in test]
    served = [e.probability for e in test]
    row: dict[str, Any] = {
        "n_train": len(train),
        "n_test": len(test),
        "test_base_rate": (sum(y_test) / len(y_test)) if test else None,
    }
    if len(set(y_train.tolist())) < 2 or len(set(y_test)) < 2:
        row.update(online_auc=None, batch_auc=None, ratio=None, ece=None)
        return row
    batch = HistGradientBoostingClassifier(random_state=seed)
    batch.fit(np.array([e.features for e in train]), y_train)
    batch_p = batch.predict_proba(np.array([e.features for e in test]))[:, 1]
    online_auc = roc_auc(served, y_test)
    batch_auc = roc_auc(batch_p.tolist(), y_test)
    row.update(
        online_auc=round(online_auc, 4),
        batch_auc=round(batch_auc, 4),
        ratio=round(online_auc / batch_auc, 4),
        ece=round(expected_calibration_error(served, y_test), 4),
        batch_ece=round(expected_calibration_error(batch_p.tolist(), y_test), 4),
        ece_if_calibrated=calibrated_ece(served),
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=Path)
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    started = time.perf_counter()
    with args.events.open("rb") as fh:
        result = run_backtest(fh, config)
    elapsed = time.perf_counter() - started
    print(
        f"backtest: {result.n_events} events, {len(result.examples)} examples in {elapsed:.1f}s",
        file=sys.stderr,
    )
    by_goal: dict[str, list[Example]] = {g.name: [] for g in config.goals}
    newest = max(s.ref_ts for s in result.states.values())
    watermark = newest - config.labels.allowed_lateness_ms
    for example in closed_window_examples(result.examples, config, watermark):
        if example.probability is not None:  # served no probability (no prior): not compared
            by_goal[example.goal].append(example)
    report = {goal: compare_goal(examples) for goal, examples in by_goal.items()}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
