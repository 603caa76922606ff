"""What every command shares: the error console, the settings, the ``dev up`` servers."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from stream.worker.settings import Settings

__all__ = ["apply_dev_env", "console", "settings_from_env"]

#: messages and progress go to stderr; stdout carries the command's output
console = Console(stderr=True)


def settings_from_env() -> Settings:
    """The worker's settings as the environment gives them (``CUSTOMER_AI_*``, ...)."""
    return Settings.from_env()


def apply_dev_env(state_dir: Path = Path(".customer-ai")) -> None:
    """Use the servers of ``customer-ai dev up`` unless the environment names others."""
    env_file = state_dir / "dev.env"
    if not env_file.is_file():
        return
    for line in env_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            os.environ.setdefault(key.strip(), value.strip())
