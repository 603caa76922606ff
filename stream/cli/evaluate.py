"""``customer-ai evaluate EVENTS --config C --out DIR``: the backtest's files.

A thin adapter: it reads the events file (JSON lines, optionally gzip) with a progress
bar, runs :func:`models.backtest.run_backtest` (the stream's own core, in-process, in
event-time order, no Kafka) and writes

- ``DIR/metrics.json``: per goal ``auc, logloss, ece, base_rate, n_examples, n_positive,
  lift_top_decile`` (and ``mean_probability, n_matured, n_open_window``), then ``all`` and
  ``live`` (served by a live model) figures against the running base rate, and the same
  per month (``months``) and per model version (``versions``), see :mod:`models.quality`;
  the goal's final
  ``status`` (``warming_up``, ``live`` or ``poor``), ``promotions``: every promotion
  decision of the trainer (:attr:`models.training.Trainer.promotions`), and ``leakage``:
  the features the leakage guard flags (:mod:`models.leakage`);
- ``DIR/examples.csv``: one row per matured example, ``goal, profile_id,
  prediction_time, label, probability, model_version, warming_up, trigger`` then one
  column per feature;
- ``DIR/profiles.jsonl``: one :func:`models.profile.profile_document` per profile (the
  schema of ``customer-ai profile ID --json``);
- ``DIR/report.html``: the self-contained visual report (:mod:`models.report_html`).

The four files of an earlier run in ``DIR`` are removed first, so whatever ``DIR`` holds
afterwards is this run's: a run that fails part-way leaves no earlier run's file beside
its own.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, cast

import orjson
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from models.backtest import EXAMPLE_COLUMNS, BacktestResult, collector_off, run_backtest
from models.config import Config, load_config
from models.outcome import Example
from models.profile import format_time, profile_documents
from models.report import examples_report, with_profiles
from models.report_html import render_html
from stream.cli.background import BackgroundFailure, in_background
from stream.cli.common import CliError, output_console
from stream.cli.program import leave_to_exit

__all__ = ["evaluate_main", "print_summary", "write_examples_csv", "write_outputs"]

console = output_console(stderr=True)

#: the files ``evaluate`` writes in ``--out``; an earlier run's are removed first (a run
#: that fails part-way never leaves another run's file beside its own)
OUTPUTS = ("metrics.json", "examples.csv", "profiles.jsonl", "report.html")


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _read_lines(path: Path, progress: Progress) -> list[bytes]:
    size = path.stat().st_size
    task = progress.add_task("read", total=size)
    lines: list[bytes] = []
    with path.open("rb") as raw, _open(path) as fh:
        for n, line in enumerate(fh, 1):
            lines.append(line)
            if n % 20_000 == 0:
                progress.update(task, completed=raw.tell() if fh is not raw else fh.tell())
    progress.update(task, completed=size)
    return lines


def _read_input(path: Path, progress: Progress, what: str) -> list[bytes]:
    try:
        return _read_lines(path, progress)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CliError(
            f"{what} file {str(path)!r} is not a readable gzip file "
            f"({exc}); give JSONL, or JSONL compressed with gzip as FILE.gz",
            2,
        ) from None


def write_outputs(
    result: BacktestResult, config: Config, out_dir: Path, summary: dict[str, str] | None = None
) -> dict[str, dict]:
    """Write metrics.json, examples.csv, profiles.jsonl and report.html; return the metrics."""
    with collector_off():  # hundreds of thousands of rows and documents, none cyclic
        return _write_outputs(result, config, out_dir, summary)


def _write_outputs(
    result: BacktestResult, config: Config, out_dir: Path, summary: dict[str, str] | None
) -> dict[str, dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # an earlier run's: never left beside a failed run's files
        stale = out_dir / name
        if stale.is_file():
            stale.unlink()
    examples_csv = out_dir / "examples.csv"
    newest = max((s.ref_ts for s in result.states.values()), default=0)
    watermark = newest - config.labels.allowed_lateness_ms

    def of_the_examples() -> dict[str, Any]:
        """examples.csv, then the report's figures of the examples."""
        write_examples_csv(examples_csv, result.examples, result.engine.featurizer.names)
        return examples_report(
            result.examples,
            config,
            watermark,
            models=result.models,
            promotions=getattr(result.trainer, "promotions", None),
        )

    if os.environ.get("CUSTOMER_AI_EVALUATE_FORK", "1") == "0":
        report = of_the_examples()
        return _write_the_others(result, config, out_dir, summary, lambda: report)
    # a forked child does the examples' half on the other core meanwhile (same bytes): on
    # the purchase log of bench/purchase_log.py 1.3 s there against 1.6 s here
    child = in_background(of_the_examples, "writing examples.csv and the report's figures")
    try:
        return _write_the_others(result, config, out_dir, summary, child.wait)
    except BackgroundFailure as exc:  # an OSError of the child's is rebuilt as itself
        if exc.child_traceback:
            console.print(exc.child_traceback, markup=False, highlight=False)
        raise CliError(exc.message) from None
    finally:
        child.reap()  # when the parent failed first: its own error is the one reported
        _partial(examples_csv).unlink(missing_ok=True)  # a child killed while writing


def _write_the_others(
    result: BacktestResult,
    config: Config,
    out_dir: Path,
    summary: dict[str, str] | None,
    examples_part: Callable[[], dict[str, Any]],
) -> dict[str, dict]:
    """Write profiles.jsonl, then (with ``examples_part()``: :func:`examples_report`)
    metrics.json and report.html; return the metrics."""
    profiles = profile_documents(result.engine, result.states)
    line = orjson.OPT_APPEND_NEWLINE
    with _whole_file(out_dir / "profiles.jsonl") as fh:
        fh.writelines(orjson.dumps(doc, option=line) for doc in profiles)
    report = with_profiles(examples_part(), profiles)
    report["summary"] = dict(summary or {})
    metrics = {goal: data["metrics"] for goal, data in report["goals"].items()}
    for goal, data in metrics.items():  # the final status and every promotion decision
        data["status"] = result.trainer.status(goal)
        data["promotions"] = [
            {k: v for k, v in p.items() if k != "goal"}
            for p in result.trainer.promotions
            if p["goal"] == goal
        ]
    with _whole_file(out_dir / "metrics.json") as fh:
        fh.write(orjson.dumps(metrics, option=orjson.OPT_INDENT_2))
    with _whole_file(out_dir / "report.html") as fh:
        fh.write(render_html(report).encode("utf-8"))
    return metrics


@contextlib.contextmanager
def _whole_file(path: Path, text: bool = False) -> Iterator[IO[Any]]:
    """A file written beside ``path`` (:func:`_partial`) and renamed onto it once
    complete: a run stopped part-way (Ctrl-C, a full disk) leaves no half file. Binary,
    or with ``text`` UTF-8 text with no newline translation (what :mod:`csv` wants)."""
    partial = _partial(path)
    try:
        with partial.open("w", newline="", encoding="utf-8") if text else partial.open("wb") as fh:
            yield fh
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _partial(path: Path) -> Path:
    """Where ``path`` is written before it is renamed to ``path``: never half a file."""
    return path.with_name(path.name + ".partial")


def write_examples_csv(path: Path, examples: Sequence[Example], feature_names: list[str]) -> None:
    """Write ``examples.csv``: :data:`~models.backtest.EXAMPLE_COLUMNS` then one column per
    feature, one row per example (the values of :func:`models.backtest.example_row`), by
    :mod:`csv`. The file is written beside ``path`` and renamed onto it when complete, so
    a failure never leaves half a file.

    Parameters
    ----------
    path : Path
        The file to write.
    examples : Sequence[Example]
        The matured examples, one row each.
    feature_names : list[str]
        The names of the features of every example's ``features``.
    """
    with _whole_file(path, text=True) as fh:
        writer = csv.writer(fh)
        writer.writerow(EXAMPLE_COLUMNS + feature_names)
        # example_row's values as a list: no dict per row (a quarter of the time)
        writer.writerows(
            [
                e.goal,
                e.profile_id,
                format_time(e.prediction_ts),
                e.label,
                e.probability,
                e.model_version,
                1 if e.served_warming_up else 0,
                getattr(e, "trigger", "event"),
                *e.features,
            ]
            for e in examples
        )


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _live_share(month: dict) -> str:
    """How much of a month a live (not warming-up) model served: ``none live``, ``all
    live`` or ``12 live``."""
    n_live, n = month["n_live"], month["n"]
    return "none live" if n_live == 0 else "all live" if n_live == n else f"{n_live} live"


def print_summary(metrics: dict[str, dict]) -> None:
    """Per goal the live figures beside the running base rate's, then the months it lost."""
    table = Table(
        "goal",
        "examples",
        "live",
        "live auc",
        "live logloss",
        "base rate logloss",
        "live ece",
        "all auc",
        "all logloss",
        "base rate logloss (all)",
        "lift@10%",
        title="served probabilities (live: not warming up) against the running base rate",
    )
    for goal, m in metrics.items():
        live, every = m["live"], m["all"]
        table.add_row(
            goal,
            str(every["n"]),
            str(live["n"]),
            *(_figure(live[k]) for k in ("auc", "logloss", "base_rate_logloss", "ece")),
            *(_figure(every[k]) for k in ("auc", "logloss", "base_rate_logloss")),
            _figure(m["lift_top_decile"]),
        )
    console.print(table)
    for goal, m in metrics.items():
        worse = [r for r in m["months"] if r["worse_than_base_rate"]]
        if worse:
            months = ", ".join(
                f"{r['month']} ({r['logloss']:.3f} vs {r['base_rate_logloss']:.3f}, n={r['n']}, "
                f"{_live_share(r)})"
                for r in worse
            )
            console.print(
                f"[yellow]{goal}[/]: served log loss worse than the base rate's in "
                f"{len(worse)} of {len(m['months'])} months: {months}"
            )
            if not any(r["n_live"] for r in worse):
                console.print(
                    f"  {goal}: no live model served in those months: what lost is the "
                    "warming-up probability (the prior, or the base rate of the last "
                    "version published) against the running base rate"
                )
        elif m["months"]:
            console.print(
                f"{goal}: served log loss no worse than the base rate's in every one of "
                f"{len(m['months'])} months"
            )
    for goal, m in metrics.items():
        flagged = m.get("leakage", {}).get("flagged", [])
        if flagged:
            named = ", ".join(
                f"{r['feature']} ("
                + ", ".join(
                    f"AUC alone {r['auc_alone']:.3f}" if reason == "auc_alone" else reason
                    for reason in r["reasons"]
                )
                + ")"
                for r in flagged
            )
            console.print(
                f"[yellow]{goal}[/]: leakage check flags {len(flagged)} features: {named} "
                '(metrics.json "leakage", and the report)',
                markup=True,
                highlight=False,
            )


def _input_file(path: Path, what: str) -> None:
    if not path.is_file():
        found = "is a directory" if path.is_dir() else "not found"
        raise CliError(f"{what} file {str(path)!r} {found}; give a JSONL file of {what}", 2)


def evaluate_main(
    events_path: Path, config_path: str | None, out_dir: Path, attributes: str | None = None
) -> int:
    """Run the backtest of ``events_path`` (with the profile fragments of the file
    ``attributes``, :mod:`models.attributes`) and write the four outputs to ``out_dir``.

    Raises
    ------
    CliError
        The events file does not exist (status 2).
    models.config.ConfigError
        The configuration is missing or invalid.
    """
    config = load_config(config_path)
    _input_file(events_path, "events")
    fragments_path = None if attributes is None else Path(attributes)
    if fragments_path is not None:
        _input_file(fragments_path, "profile fragments")
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(
            f"--out {str(out_dir)!r} is a file; give a directory (created if missing)", 2
        )
    columns = (
        TextColumn("[bold]{task.description:>8}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeRemainingColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=True) as progress:
        lines = _read_input(events_path, progress, "events")
        fragments = (
            [] if fragments_path is None else _read_input(fragments_path, progress, "fragments")
        )
        task = progress.add_task("replay", total=len(lines))
        replay_started = time.perf_counter()
        result = run_backtest(
            lines,
            config,
            progress=lambda n: progress.update(task, completed=n),
            attributes=fragments,
        )
        replay_seconds = time.perf_counter() - replay_started
    del lines
    rate = result.n_events / replay_seconds if replay_seconds > 0 else 0.0
    summary = {
        "events": f"{result.n_events:,}",
        "rejected": f"{result.n_rejected:,}",
        "duplicates skipped": f"{result.n_duplicates:,}",
        "profiles": f"{len(result.states):,}",
        **({"profile fragments": f"{result.n_fragments:,}"} if fragments_path else {}),
        **(
            {
                "persons merged": f"{result.persons.merges:,}",
                "links refused (max_identities)": f"{result.persons.refused:,}",
            }
            if result.persons is not None
            else {}
        ),
        "matured examples": f"{len(result.examples):,}",
        "replay": f"{replay_seconds:.1f} s ({rate:,.0f} events/s)",
        "source": events_path.name,
    }
    metrics = write_outputs(result, config, out_dir, summary)
    print_summary(metrics)
    for what, rejected in (("events", result.rejected), ("fragments", result.rejected_fragments)):
        if rejected:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items()))
            console.print(f"[yellow]rejected {what}[/] ({reasons})")
    if result.n_duplicates:
        console.print(
            f"{result.n_duplicates:,} duplicate events skipped (an _id their profile had "
            f"applied among its last {config.recent_ids}; \\[dedupe] recent_ids)"
        )
    if result.persons is not None:
        console.print(
            f"identity stitching: {result.persons.merges:,} persons merged, "
            f"{result.persons.refused:,} links refused ([identity] max_identities)"
        )
    console.print(
        f"{result.n_events:,} events, {len(result.states):,} profiles in "
        f"{time.perf_counter() - started:.1f}s ({rate:,.0f} events/s replayed); "
        f"wrote {out_dir}/metrics.json, examples.csv, profiles.jsonl, report.html"
    )
    leave_to_exit(result)  # millions of objects: the end of the process frees them at once
    return 0
