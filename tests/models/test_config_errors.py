"""A bad ``customer-ai.toml`` is refused at start-up with a message naming the field and the fix.

Issue 4, "Config errors": unknown op, a goal naming an unknown event, a window <= 0,
a duplicate goal name (and a few more), both from :func:`parse_config` and from the
``customer-ai worker`` command, which must exit non-zero with that message.

Contract: docs/DESIGN.md, sections "The configuration file" and "Conditions".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from models.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[[events]]
name = "page_view"
when = { field = "eventType", op = "equals", value = "web.webpagedetails.pageViews" }

[[events]]
name = "purchase"
when = { field = "eventType", op = "equals", value = "commerce.purchases" }
value = "commerce.order.priceTotal"

[[goals]]
name = "conversion"
type = "occurs"
event = "purchase"
window_days = 30

[[goals]]
name = "churn"
type = "does_not_occur"
event = "purchase"
window_days = 90
eligibility = { field = "purchase_count_total", op = "gte", value = 1 }
"""

#: (name, (old, new) replacements of GOOD, fragments the message must contain: the field
#: path first, then the words of the fix)
CASES = [
    (
        "unknown op",
        [('op = "equals", value = "commerce.purchases"', 'op = "regex", value = "commerce.*"')],
        ["events[1].when.op", "unknown op 'regex'", "use one of", "equals", "starts_with"],
    ),
    (
        "unknown op in eligibility",
        [('op = "gte", value = 1', 'op = ">=", value = 1')],
        ["goals[1].eligibility.op", "unknown op '>='", "use one of", "gte"],
    ),
    (
        "goal naming an unknown event",
        [('event = "purchase"\nwindow_days = 30', 'event = "order"\nwindow_days = 30')],
        ["goals[0].event", "unknown event 'order'", "define it under [[events]]", "purchase"],
    ),
    (
        "window of zero days",
        [("window_days = 30", "window_days = 0")],
        ["goals[0].window_days", "> 0", "got 0", "window_days = 30"],
    ),
    (
        "negative window",
        [("window_days = 90", "window_days = -7")],
        ["goals[1].window_days", "> 0", "got -7"],
    ),
    (
        "infinite window",
        [("window_days = 90", "window_days = inf")],
        ["goals[1].window_days", "> 0", "got inf"],
    ),
    (
        "window that is not a number",
        [("window_days = 30", 'window_days = "30"')],
        ["goals[0].window_days", "number of days", "got '30'"],
    ),
    (
        "duplicate goal name",
        [('name = "churn"', 'name = "conversion"')],
        ["goals[1].name", "duplicate goal name 'conversion'", "unique"],
    ),
    (
        "duplicate event name",
        [('name = "page_view"', 'name = "purchase"')],
        ["events[1].name", "duplicate event name 'purchase'", "unique"],
    ),
    (
        "unknown goal type",
        [('type = "occurs"', 'type = "happens"')],
        ["goals[0].type", "'happens'", '"occurs" or "does_not_occur"'],
    ),
    (
        "condition without a value",
        [('op = "gte", value = 1', 'op = "gte"')],
        ["goals[1].eligibility.value", "needs a value"],
    ),
    (
        "unknown key in a goal",
        [("window_days = 30", "window_days = 30\nwindow = 30")],
        ["goals[0]", "unknown key(s) ['window']", "allowed", "window_days"],
    ),
    (
        "model setting that is not finite",
        [("[[goals]]", "[model]\nlearning_rate = nan\n\n[[goals]]")],
        ["model.learning_rate", "finite number", "got nan"],
    ),
    (
        "rescoring period beyond ten years",
        [("[[goals]]", "[scoring]\nrescore_every_hours = 1e300\n\n[[goals]]")],
        ["scoring.rescore_every_hours", "between 1 and 87,600 hours", "got 1e+300"],
    ),
    (
        "bucket name that is not a string",
        [("[[goals]]", '[buckets]\nthresholds = [50]\nnames = ["a", 1]\n\n[[goals]]')],
        ["buckets.names", "2 distinct non-empty strings", "got ['a', 1]"],
    ),
    (
        "negative promotion margin",
        [("[[goals]]", "[model]\npromotion_margin_se = -1\n\n[[goals]]")],
        ["model.promotion_margin_se", ">= 0", "got -1"],
    ),
    (
        "table that is not a table",
        [('[[events]]\nname = "page_view"', 'model = 3\n\n[[events]]\nname = "page_view"')],
        ["[model]", "must be a table", "key = value"],
    ),
]


def bad_config(replacements: list[tuple[str, str]]) -> str:
    text = GOOD
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def test_the_good_config_parses() -> None:
    cfg = parse_config(GOOD)
    assert [g.name for g in cfg.goals] == ["conversion", "churn"]


@pytest.mark.parametrize(("name", "replacements", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_refused_naming_field_and_fix(
    name: str, replacements: list[tuple[str, str]], fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(bad_config(replacements))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{name}: {fragment!r} not in {message!r}"
    assert message.startswith(fragments[0]) or f"{fragments[0]}:" in message


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CUSTOMER_AI_CONFIG"):
        load_config(tmp_path / "nope.toml")


def test_not_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[[goals]\nname = ")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*not valid TOML"):
        load_config(path)


CLI_CASES = [
    c
    for c in CASES
    if c[0]
    in {
        "unknown op",
        "goal naming an unknown event",
        "window of zero days",
        "duplicate goal name",
        "table that is not a table",
    }
]


@pytest.mark.parametrize(
    ("name", "replacements", "fragments"), CLI_CASES, ids=[c[0] for c in CLI_CASES]
)
def test_worker_with_a_bad_config_exits_non_zero_with_the_message(
    tmp_path: Path, name: str, replacements: list[tuple[str, str]], fragments: list[str]
) -> None:
    path = tmp_path / "customer-ai.toml"
    path.write_text(bad_config(replacements))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMER_AI_")}
    # unreachable servers: the config must be refused before any connection is tried
    env.update(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", REDIS_URL="redis://127.0.0.1:1/0")
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "worker", "--config", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    line = " ".join(output.split())
    assert "configuration error:" in line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
