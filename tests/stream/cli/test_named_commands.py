"""Every ``customer-ai <command>`` a message of the code names is a command that exists.

Issue 16: a worker logged once a second to run ``customer-ai reset-models``, a command
that does not exist. Every string literal of ``models/`` and ``stream/`` (messages, log
lines, help texts; docstrings too) is scanned for ``customer-ai <word>``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from stream.cli.main import build_parser

REPO = Path(__file__).resolve().parents[3]
#: words that follow "customer-ai" in prose ("customer-ai cannot start ..."), not commands
PROSE = {"cannot", "needs"}
NAMED = re.compile(r"customer-ai ([a-z][a-z-]*)")


def commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices or {})


def named_commands() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for root in ("models", "stream"):
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for word in NAMED.findall(node.value):
                        found.setdefault(word, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_every_command_a_message_names_exists() -> None:
    known = commands()
    assert {"worker", "profile", "evaluate"} <= known
    missing = {w: where[:3] for w, where in named_commands().items() if w not in known | PROSE}
    assert missing == {}, f"messages name commands that do not exist: {missing}"
