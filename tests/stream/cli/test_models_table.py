"""``customer-ai models``: a refused candidate is not named as a refused version that is
served (``refused v32`` beside ``v32``, the base-rate version published instead while the
goal warms up), and the examples show their positives (a goal that never occurs warms up
for good with ``1,703 (0 pos.)``, not a bare ``1,703``)."""

from __future__ import annotations

import io

from models.model import LinearModel
from stream.cli.models import _print_table
from stream.ops.models_view import model_summary


def test_the_models_table_names_a_refused_candidate_and_the_positives() -> None:
    model = LinearModel.from_json(LinearModel.cold("never", ["a"]).to_json())
    model.version, model.status, model.warming_up = 32, "warming_up", True
    refused = {"promoted": False, "version": 32, "n_examples": 1563, "candidate_logloss": 0.1}
    row = model_summary(model, None, 0.65)
    row.update(n_examples=1703, n_positive=0, last_promotion=refused)
    out = io.StringIO()
    _print_table({"never": row}, out)
    text = " ".join(out.getvalue().split())
    assert "1,703 (0 pos.)" in text
    assert "candidate refused at 1,563 examples (base rate served as v32;" in text
    assert "refused v32" not in text
