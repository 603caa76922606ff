"""The pure core of customer-ai: events, features, labels, models, metrics, backtest.

Compiled or interpreted
-----------------------
``setup.py`` compiles the per-event modules (``NATIVE_MODULES`` there) with mypyc when it
can. The compiled modules run the very same code about twice as fast; they are used
only if

- ``CUSTOMER_AI_NATIVE`` is not ``0``, and
- every compiled module's source is byte for byte the one it was built from (the
  build records their SHA-256 in ``models/_native_sources.py``), and no other module of
  this package has a compiled extension (an earlier build's, which would shadow its
  source).

Otherwise every module of this package is imported from its Python source: an edited
source is never shadowed by a stale build. :data:`NATIVE` tells which is running
(``customer-ai worker`` logs it at start).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import os
import sys
import warnings
from pathlib import Path

__all__ = ["NATIVE"]

_HERE = Path(__file__).resolve().parent


def _compiled(name: str) -> bool:
    return any(
        (_HERE / f"{name}{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def _use_compiled() -> bool:
    """True if the compiled modules exist, are wanted and match their sources."""
    try:
        SHA256: dict[str, str] = importlib.import_module("models._native_sources").SHA256
    except ImportError:  # never compiled
        return False
    if not all(_compiled(name) for name in SHA256):
        return False
    if os.environ.get("CUSTOMER_AI_NATIVE", "1") == "0":
        return False
    unlisted = sorted(
        {
            path.name
            for suffix in importlib.machinery.EXTENSION_SUFFIXES
            for path in _HERE.glob(f"*{suffix}")
            if path.name.split(".", 1)[0] not in SHA256
        }
    )
    if unlisted:  # an earlier build's: it would shadow its module's source
        warnings.warn(
            f"models/{unlisted[0]} is not of the last build: running the Python sources "
            "(slower); rebuild with `make native` (or `pip install -e .`)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    changed = [
        name
        for name, digest in SHA256.items()
        if not (_HERE / f"{name}.py").exists()
        or hashlib.sha256((_HERE / f"{name}.py").read_bytes()).hexdigest() != digest
    ]
    if changed:
        warnings.warn(
            f"models/{changed[0]}.py changed since it was compiled: running the Python "
            "sources (slower); rebuild with `make native` (or `pip install -e .`)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def _import_sources_only() -> None:
    """Import this package's modules from ``.py`` files, never from a compiled extension."""
    for entry in __path__:
        sys.path_importer_cache[entry] = importlib.machinery.FileFinder(
            entry,
            (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
            (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
        )


#: True when the per-event modules run compiled (see the module docstring).
NATIVE = _use_compiled()
if not NATIVE:
    _import_sources_only()
