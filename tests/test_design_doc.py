"""docs/DESIGN.md is the contract, and the code cannot drift from it silently.

- the contract tests cite it (a "Contract:" paragraph naming its sections in their module
  docstring), and every section a docstring cites exists;
- the field lists of its output messages are the fields the encoders write, in order
  (the score fields also equal ``tests.harness.SCORE_FIELDS``), and its JSON examples have
  exactly those fields;
- its Redis keys and profile hash fields are the ones the store builds and the scripts
  write; its configuration keys are the ones ``parse_config`` accepts; its environment
  variables are the ones the code reads;
- ``models/`` imports nothing of ``stream/``, Kafka or Redis;
- every reference to the design page in the repository names ``docs/DESIGN.md``.

Contract: docs/DESIGN.md, sections "Output messages", "Redis keys", "Configuration" and
"Dependency rule".
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from models.config import ConfigError, parse_config
from models.factors import Factor
from models.messages import example_message, score_message, segment_message
from models.metrics import RollingMetrics
from models.model import LinearModel
from models.outcome import Example, SegmentChange
from stream.worker import redis_scripts, scorer
from stream.worker.model_store import ModelStore
from stream.worker.profile_store import ProfileStore
from stream.worker.scorer import Record, dlq_message
from tests.harness import SCORE_FIELDS, SEGMENT_FIELDS

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs/DESIGN.md"
CITATION = "Contract: docs/DESIGN.md"

#: the tests that pin a message format, a Redis key layout, the config schema or a guarantee
CONTRACT_TESTS = (
    "tests/harness.py",
    "tests/models/test_messages.py",
    "tests/models/test_events.py",
    "tests/models/test_conditions.py",
    "tests/models/test_config_errors.py",
    "tests/models/test_labels.py",
    "tests/stream/worker/test_pipeline.py",
    "tests/stream/worker/test_dlq.py",
    "tests/stream/worker/test_store_batch.py",
    "tests/stream/worker/test_faults.py",
    "tests/stream/worker/test_batching.py",
    "tests/stream/worker/test_lanes.py",
    "tests/stream/worker/test_handover.py",
    "tests/stream/ops/test_segments.py",
    "tests/test_design_doc.py",
)


# ---- reading docs/DESIGN.md --------------------------------------------------------------
def _lines() -> list[str]:
    return DESIGN.read_text(encoding="utf-8").splitlines()


def _headings() -> list[tuple[int, int, str]]:
    """``(line index, level, title)`` of every heading outside code blocks."""
    out, fenced = [], False
    for i, line in enumerate(_lines()):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^(#{1,6})\s+(.+?)\s*$", line)):
            out.append((i, len(m.group(1)), m.group(2)))
    return out


def section(title: str) -> str:
    """The text of the section ``title``, its subsections included."""
    lines, headings = _lines(), _headings()
    for k, (i, level, name) in enumerate(headings):
        if name == title:
            end = next((j for j, lv, _ in headings[k + 1 :] if lv <= level), len(lines))
            return "\n".join(lines[i + 1 : end])
    raise AssertionError(f"docs/DESIGN.md has no section {title!r}")


def table_names(text: str) -> list[str]:
    """The backticked names in the first column of the tables of ``text``, in order."""
    return re.findall(r"(?m)^\|\s*`([^`]+)`", text)


def top_level(names: list[str]) -> list[str]:
    """Names that are not sub-fields (``factors[].label``, ``metrics.auc``)."""
    return [n for n in names if "." not in n and "[" not in n]


def sub_fields(names: list[str], parent: str) -> list[str]:
    return [n.split(".", 1)[1] for n in names if n.startswith(parent + ".")]


def json_example(text: str) -> dict:
    """The first ``json`` code block of ``text``, parsed (key order kept)."""
    m = re.search(r"```json\n(.*?)```", text, re.S)
    assert m, "the section has no JSON example"
    return json.loads(m.group(1))


def citations(docstring: str) -> list[str]:
    """The section titles cited by the ``Contract: docs/DESIGN.md`` paragraphs of a docstring."""
    titles: list[str] = []
    for paragraph in re.split(r"\n\s*\n", docstring):
        start = paragraph.find(CITATION)
        if start >= 0:  # up to the end of its sentence (section titles hold no period)
            sentence = re.split(r"\.(?:\s|$)", paragraph[start + len(CITATION) :], maxsplit=1)[0]
            titles += [" ".join(t.split()) for t in re.findall(r'"([^"]+)"', sentence)]
    return titles


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


# ---- the document and its citations ------------------------------------------------------
def test_design_doc_exists_with_unique_section_titles() -> None:
    titles = [t for _, _, t in _headings()]
    assert DESIGN.is_file()
    assert len(titles) == len(set(titles)), sorted(t for t in titles if titles.count(t) > 1)


@pytest.mark.parametrize("path", CONTRACT_TESTS)
def test_every_contract_test_cites_a_section(path: str) -> None:
    cited = citations(_docstring(REPO / path))
    assert cited, f'{path}: its module docstring needs a line {CITATION}, section "..."'


def test_every_cited_section_exists() -> None:
    titles = {t for _, _, t in _headings()}
    cited: dict[str, list[str]] = {}
    for top in ("tests", "stream", "models"):
        for path in sorted((REPO / top).rglob("*.py")):
            for title in citations(_docstring(path)):
                cited.setdefault(title, []).append(str(path.relative_to(REPO)))
    assert cited
    missing = {t: paths for t, paths in cited.items() if t not in titles}
    assert not missing, f"sections cited but not in docs/DESIGN.md: {missing}"


# ---- output messages ---------------------------------------------------------------------
def _check_message(title: str, encoded: dict) -> list[str]:
    """The section's top-level fields equal the encoder's, and so do its example's."""
    names = table_names(section(title))
    assert top_level(names) == list(encoded), (title, top_level(names), list(encoded))
    assert list(json_example(section(title))) == list(encoded), title
    return names


def test_score_fields_are_the_encoders_and_the_harness() -> None:
    from models.outcome import Score

    factor = Factor(feature="f", label="F", value=1.0, contribution=0.5, importance="medium")
    score = Score("p", "g", 0.5, 50.0, "medium", 1, False, [factor], "e", 0)
    names = _check_message("Scores", json.loads(score_message(score, "now")))
    assert top_level(names) == list(SCORE_FIELDS)
    factors = [n.split("].", 1)[1] for n in names if n.startswith("factors[].")]
    assert factors == list(Factor.__annotations__)
    example = json_example(section("Scores"))
    assert all(list(f) == factors for f in example["factors"])


def test_segment_fields_are_the_encoders_and_the_harness() -> None:
    change = SegmentChange("p", "g", None, "high", 0.5, 0)
    names = _check_message("Segment changes", json.loads(segment_message(change)))
    assert top_level(names) == list(SEGMENT_FIELDS)


def test_training_example_fields_are_the_encoders() -> None:
    example = Example("p|g|0|e", "g", "p", 0, 1, 0.5, 1, [1.0], 5, False)
    _check_message("Training examples", json.loads(example_message(example)))


def test_dead_letter_fields_are_the_encoders() -> None:
    record = Record("customer-ai.events", 0, 7, b"p", b"{", 0)
    _check_message("Dead letters", json.loads(dlq_message(record, "invalid_json", "x")))


def test_model_fields_are_the_snapshots() -> None:
    model = LinearModel.cold("g", ["a"])
    names = _check_message("Models", json.loads(model.to_json()))
    assert sub_fields(names, "metrics") == list(RollingMetrics(10).summary())
    assert list(json_example(section("Models"))["metrics"]) == sub_fields(names, "metrics")


# ---- Redis -------------------------------------------------------------------------------
def _key_patterns() -> set[str]:
    """Every key the store modules build, as ``P:...`` with ``<placeholders>``."""
    keys = set()
    for module in ("profile_store", "model_store"):
        source = (REPO / "stream" / "worker" / f"{module}.py").read_text(encoding="utf-8")
        for key in re.findall(r'f"\{self\.prefix\}:([^"]*)"', source):
            key = re.sub(r"\{\{\{(\w+)\}\}\}", r"{<\1>}", key)  # the hash tag
            keys.add("P:" + re.sub(r"(?<![{<])\{(\w+)\}", r"<\1>", key))
    # and they are what the key methods return
    store = SimpleNamespace(prefix="P")
    assert ProfileStore.profile_key(store, "<profile_id>") in keys  # type: ignore[arg-type]
    assert ModelStore.learnt_key(store, "<goal>") in keys  # type: ignore[arg-type]
    return keys


def test_redis_keys_are_the_ones_the_store_builds() -> None:
    documented = set(table_names(section("Redis keys")))
    hash_fields = set(table_names(section("Profile hash")))
    assert documented - hash_fields == _key_patterns()


def test_profile_hash_fields_are_the_ones_the_scripts_write() -> None:
    fields = set()
    for script in (redis_scripts.CAS_BATCH_SCRIPT, redis_scripts.LOAD_BATCH_SCRIPT):
        fields |= set(re.findall(r"'([a-z]+)'", script))
    source = Path(scorer.__file__).read_text(encoding="utf-8")
    offset = re.search(r'offset_field = f"(o:\{topic\}:\{partition\})"', source)
    assert offset, "the scorer's applied-offset field is not o:{topic}:{partition}"
    fields.add(re.sub(r"\{(\w+)\}", r"<\1>", offset.group(1)))
    assert set(table_names(section("Profile hash"))) == fields


# ---- configuration and environment -------------------------------------------------------
_EVENT = '[[events]]\nname = "e"\nwhen = { field = "eventType", op = "exists" }\n'
_GOAL = '[[goals]]\nname = "g"\ntype = "occurs"\nevent = "e"\nwindow_days = 1\n'


def _allowed(text: str) -> set[str]:
    """The keys ``parse_config`` allows where ``text`` puts the unknown key ``zzz``."""
    with pytest.raises(ConfigError) as refused:
        parse_config(text)
    m = re.search(r"unknown key\(s\) \['zzz'\]; allowed: (\[.*\])", str(refused.value))
    assert m, f"not an unknown-key error: {refused.value}"
    return set(ast.literal_eval(m.group(1)))


def test_configuration_keys_are_the_ones_parse_config_accepts() -> None:
    documented: dict[str, set[str]] = {}
    for name in table_names(section("The configuration file")):
        table, key = name.split(".", 1)
        documented.setdefault(table.removesuffix("[]"), set()).add(key)
    tables = _allowed("zzz = 1\n")
    assert set(documented) == tables
    for table in sorted(tables):
        if table == "events":
            text = "[[events]]\nzzz = 1\n"
        elif table == "goals":
            text = _EVENT + _GOAL + "zzz = 1\n"
        elif table == "attributes":
            text = _EVENT + _GOAL + "[[attributes]]\nzzz = 1\n"
        else:
            text = _EVENT + _GOAL + f"[{table}]\nzzz = 1\n"
        assert documented[table] == _allowed(text), table


def test_environment_variables_are_the_ones_the_code_reads() -> None:
    name = r"((?:CUSTOMER_AI|KAFKA|REDIS)_[A-Z_]+)"
    read = re.compile(r'(?:\.get\(|_(?:get|number)\(\s*\w+,\s*|environ\[)\s*"' + name + '"')
    in_code: set[str] = set()
    for top in ("stream", "models"):
        for path in (REPO / top).rglob("*.py"):
            in_code |= set(read.findall(path.read_text(encoding="utf-8")))
    documented = set(re.findall(f"`{name}`", section("Environment")))
    assert documented == in_code, (sorted(in_code - documented), sorted(documented - in_code))


# ---- layout and references ---------------------------------------------------------------
def test_models_imports_nothing_of_stream_kafka_or_redis() -> None:
    banned = ("stream", "faust", "mode", "aiokafka", "kafka", "redis", "hiredis")
    offenders = []
    for path in sorted((REPO / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in banned]
    assert not offenders


def _text_files() -> list[Path]:
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("build", "dist", "out")]
        files += [
            Path(root) / n
            for n in names
            if n.endswith((".py", ".md", ".toml", ".yml", ".yaml", ".cfg")) or n == "Makefile"
        ]
    return files


def test_every_reference_to_the_design_points_to_docs_design_md() -> None:
    wrong = []
    for path in _text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"DESIGN\.md", text):
            before = text[max(0, m.start() - 5) : m.start()]
            relative = path.parent.name == "docs" and before.endswith("(")
            if not before.endswith("docs/") and not relative:
                wrong.append(f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert not wrong, f"write docs/DESIGN.md: {wrong}"
