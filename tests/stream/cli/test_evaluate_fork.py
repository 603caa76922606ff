"""``evaluate`` writes ``examples.csv`` and the report's figures of the examples in a
forked child (``CUSTOMER_AI_EVALUATE_FORK``).

Both settings write the same bytes, and the same bytes as ``csv.writer`` row by row; a
child that fails is an error of ``evaluate`` (never a silent or half-written file), a
file error the same message either way, and an error of the parent still reaps the child.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from models.backtest import EXAMPLE_COLUMNS, BacktestResult, example_row, run_backtest
from models.config import load_config
from models.outcome import Example
from models.synthetic import generate_events
from stream.cli import evaluate
from stream.cli.background import BackgroundFailure, BackgroundTask, in_background
from stream.cli.common import CliError
from tests.harness import CONFIG, REPO

CFG = load_config(CONFIG)
OUTPUTS = ("metrics.json", "examples.csv", "profiles.jsonl", "report.html")


@pytest.fixture(scope="module")
def result() -> BacktestResult:
    events = generate_events(profiles=150, days=200, seed=5)
    return run_backtest([orjson.dumps(e) for e in events], CFG)


def _csv_writer_text(examples: list[Example], names: list[str]) -> str:
    """examples.csv as ``csv.writer`` writes the rows :func:`example_row` defines."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(EXAMPLE_COLUMNS + names)
    writer.writerows(example_row(e, names).values() for e in examples)
    return buffer.getvalue()


def test_forked_or_not_the_outputs_are_the_same_bytes(
    result: BacktestResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = {}
    for fork in ("1", "0"):
        monkeypatch.setenv("CUSTOMER_AI_EVALUATE_FORK", fork)
        out = tmp_path / f"fork-{fork}"
        evaluate.write_outputs(result, CFG, out, {"events": "1"})
        assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
        written[fork] = {name: (out / name).read_bytes() for name in OUTPUTS}
    assert written["1"] == written["0"]
    names = result.engine.featurizer.names
    expected = _csv_writer_text(result.examples, names).encode()
    assert len(result.examples) > 100 and written["1"]["examples.csv"] == expected


def test_the_csv_of_awkward_values_is_the_csv_modules(tmp_path: Path) -> None:
    """Quotes, commas, line breaks, None, integers and booleans, rows of uneven length."""
    names = ["a", "b", "c"]

    def example(i: int, features: list, profile_id: str = "p", trigger: str = "event") -> Example:
        return Example(
            f"e{i}", "conversion", profile_id, i * 1000, i % 2, None if i == 3 else 0.25,
            i, features, i, i % 3 == 0, "", trigger,
        )  # fmt: skip

    even = [
        example(0, [1.0, 2, True], 'say "hi", twice'),
        example(1, [0.1 + 0.2, -0.0, 1e-300], "line\nbreak", trigger="sched,ule"),
        example(2, [None, "x,y", 'q"'], "cr\rhere"),
        example(3, [float("inf"), "two\r\nlines", ""]),
    ]
    for examples in (even, [*even, example(4, [1.0])], [], [example(5, [1.0, 2.0, 3.0])]):
        path = tmp_path / "examples.csv"
        evaluate.write_examples_csv(path, examples, names)
        assert path.read_bytes() == _csv_writer_text(examples, names).encode()
    for few in ([], ["a"]):  # a row of one empty field is quoted by csv
        examples = [example(6, [""] * len(few)), example(7, [None] * len(few))]
        evaluate.write_examples_csv(path, examples, few)
        assert path.read_bytes() == _csv_writer_text(examples, few).encode()


def test_a_failing_child_is_an_error_and_leaves_no_half_file(
    result: BacktestResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails_halfway(path: Path, examples: list, names: list) -> None:
        (path.parent / (path.name + ".partial")).write_text("goal,profile_id\nconv")
        raise OSError("No space left on device")

    for name in OUTPUTS:  # an earlier run's files: not left beside this run's
        (tmp_path / name).write_text("an earlier run")
    monkeypatch.setenv("CUSTOMER_AI_EVALUATE_FORK", "1")
    monkeypatch.setattr(evaluate, "write_examples_csv", fails_halfway)
    with pytest.raises(CliError) as caught:
        evaluate.write_outputs(result, CFG, tmp_path, None)
    assert (
        "writing examples.csv and the report's figures failed in its child process "
        "(exited with status 1)"
    ) in str(caught.value)
    assert "OSError: No space left on device" in caught.value.message
    assert not (tmp_path / "examples.csv").exists()
    assert not (tmp_path / "examples.csv.partial").exists()


def test_a_file_error_of_the_child_is_the_same_error_in_the_parent(
    result: BacktestResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk or file problem is the user's to fix: the parent raises the child's OSError
    (its errno, message and file), which the CLI reports as it would in process."""

    def disk_full(path: Path, examples: list, names: list) -> None:
        (path.parent / (path.name + ".partial")).write_text("goal,profile_id\nconv")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setenv("CUSTOMER_AI_EVALUATE_FORK", "1")
    monkeypatch.setattr(evaluate, "write_examples_csv", disk_full)
    with pytest.raises(OSError) as caught:
        evaluate.write_outputs(result, CFG, tmp_path, None)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.strerror == "No space left on device"
    assert caught.value.filename == str(tmp_path / "examples.csv")
    assert not (tmp_path / "examples.csv.partial").exists()


@pytest.mark.parametrize("fork", ["0", "1"])
def test_an_unwritable_examples_csv_is_a_message_not_a_traceback(tmp_path: Path, fork: str) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b"\n".join(orjson.dumps(e) for e in generate_events(profiles=20, days=30, seed=3))
    )
    out = tmp_path / "out"
    (out / "examples.csv").mkdir(parents=True)  # a directory where the file goes
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "evaluate", str(events), "--config", str(CONFIG)]
        + ["--out", str(out)],
        cwd=REPO,
        env={**os.environ, "CUSTOMER_AI_EVALUATE_FORK": fork},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Is a directory" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "examples.csv.partial").exists()


def test_an_error_of_the_parent_is_raised_once_the_child_is_reaped(
    result: BacktestResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*args: object) -> dict:
        raise ValueError("the report failed")

    started = []

    def recorded(task: Callable[[], object], what: str) -> BackgroundTask:
        started.append(in_background(task, what))
        return started[-1]

    (tmp_path / "metrics.json").write_text("{}")  # an earlier run's
    monkeypatch.setenv("CUSTOMER_AI_EVALUATE_FORK", "1")
    monkeypatch.setattr(evaluate, "_write_the_others", fails)
    monkeypatch.setattr(evaluate, "in_background", recorded)
    with pytest.raises(ValueError, match="the report failed"):
        evaluate.write_outputs(result, CFG, tmp_path, None)
    assert (tmp_path / "examples.csv").stat().st_size > 0  # the child had finished
    assert not (tmp_path / "metrics.json").exists()  # not the earlier run's beside it
    with pytest.raises(ChildProcessError):
        os.waitpid(started[0].pid, os.WNOHANG)  # and was reaped


@pytest.mark.parametrize("fork", ["0", "1"])
def test_a_failure_while_writing_the_profiles_leaves_no_half_file(
    result: BacktestResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: str
) -> None:
    """profiles.jsonl is written beside its name and renamed when whole: a document that
    cannot be written (here: not JSON) half-way through leaves neither file."""
    real = evaluate.profile_documents

    def half_good(engine: object, states: dict) -> list:
        docs = real(engine, states)  # type: ignore[arg-type]
        return docs[: len(docs) // 2] + [{"not json": {1j}}] + docs[len(docs) // 2 :]

    monkeypatch.setenv("CUSTOMER_AI_EVALUATE_FORK", fork)
    monkeypatch.setattr(evaluate, "profile_documents", half_good)
    with pytest.raises(TypeError):
        evaluate.write_outputs(result, CFG, tmp_path, None)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "profiles.jsonl" not in left and not [n for n in left if n.endswith(".partial")], left
    assert "metrics.json" not in left and "report.html" not in left


def test_a_failure_while_writing_the_report_leaves_no_half_file(
    result: BacktestResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(report: dict) -> str:
        raise MemoryError("no room for the page")

    monkeypatch.setattr(evaluate, "render_html", fails)
    with pytest.raises(MemoryError):
        evaluate.write_outputs(result, CFG, tmp_path, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "examples.csv",
        "metrics.json",
        "profiles.jsonl",
    ]
    assert len((tmp_path / "profiles.jsonl").read_bytes().splitlines()) == len(result.states)


def test_the_task_s_value_comes_back_through_json() -> None:
    value = {"a": [1, 2.5, None, float("nan")], "b": (3, "x")}
    back = in_background(lambda: value, "a task").wait()
    assert back["a"][:3] == [1, 2.5, None] and back["a"][3] != back["a"][3]  # NaN kept
    assert back["b"] == [3, "x"]
    big = list(range(200_000))  # beyond a pipe's 64 KiB: the child waits for the reader
    assert in_background(lambda: big, "a big task").wait() == big


def test_a_value_json_cannot_carry_is_an_error_of_the_task() -> None:
    with pytest.raises(BackgroundFailure, match="is not JSON serializable"):
        in_background(lambda: {1j}, "a task").wait()


def test_reap_after_a_failure_of_the_parent_ends_a_child_blocked_on_its_result() -> None:
    task = in_background(lambda: "x" * 1_000_000, "a task")
    task.reap()  # never reads: the child finds the pipe closed and exits
    with pytest.raises(ChildProcessError):
        os.waitpid(task.pid, os.WNOHANG)
    task.reap()  # once only


def test_a_killed_child_is_reported_with_its_signal() -> None:
    task = in_background(lambda: os.kill(os.getpid(), signal.SIGKILL), "a task")
    with pytest.raises(
        BackgroundFailure, match=r"a task failed in its child process \(killed by signal 9\)"
    ):
        task.wait()
