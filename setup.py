"""Build hook: compile the scoring core to C with mypyc, when it can.

The modules in :data:`NATIVE_MODULES` are the per-event path of the worker (decode,
conditions, features, labels, state, scoring, quantiles). mypyc compiles their typed,
pure Python into a C extension that runs the same code about twice as fast; the Python
sources stay the reference and are what runs whenever the extension is missing, out of
date or turned off (``models/__init__.py`` decides at import time).

- ``CUSTOMER_AI_NATIVE=0`` at build time skips compilation (a pure-Python install).
- A failed compilation (no C compiler, say) is not an error: the extensions are
  optional and the install falls back to pure Python.
- Next to the extensions the build writes ``models/_native_sources.py``: the SHA-256 of
  each compiled source. An extension whose source changed since is not used.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
#: compiled together (one shared library): they call each other natively
NATIVE_MODULES = [
    "rounding",
    "quantiles",
    "conditions",
    "events",
    "labels",
    "state",
    "features",
    "model",
    "profile",
    "factors",
    "outcome",
    "explain",
    "engine",
    "messages",
]
GROUP = "customer_ai_native"


def _write_manifest() -> None:
    digests = {
        name: hashlib.sha256((ROOT / "models" / f"{name}.py").read_bytes()).hexdigest()
        for name in NATIVE_MODULES
    }
    lines = [
        '"""SHA-256 of the sources compiled by setup.py (generated; not in git)."""',
        "",
        "SHA256 = {",
        *(f'    "{name}": "{digest}",' for name, digest in digests.items()),
        "}",
        "",
    ]
    (ROOT / "models" / "_native_sources.py").write_text("\n".join(lines))


def _remove_previous_build() -> None:
    """Delete an in-place build of other sources (an editable install builds in place)."""
    (ROOT / "models" / "_native_sources.py").unlink(missing_ok=True)
    for name in NATIVE_MODULES:
        for old in (ROOT / "models").glob(f"{name}.*.so"):
            old.unlink()
    for old in ROOT.glob(f"{GROUP}__mypyc.*.so"):
        old.unlink()


def _native_extensions() -> list:
    _remove_previous_build()
    if os.environ.get("CUSTOMER_AI_NATIVE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("mypyc not available: installing the pure-Python core", file=sys.stderr)
        return []
    try:
        extensions = mypycify(
            [f"models/{name}.py" for name in NATIVE_MODULES],
            opt_level="3",
            group_name=GROUP,
        )
    except (Exception, SystemExit) as exc:  # a type error mypyc refuses: stay pure Python
        print(
            f"mypyc could not compile the core ({exc!r}): installing pure Python", file=sys.stderr
        )
        return []
    for extension in extensions:
        extension.optional = True  # no compiler: fall back to the Python sources
        # the same IEEE doubles as CPython: no fused multiply-adds
        if sys.platform != "win32":
            extension.extra_compile_args = [*extension.extra_compile_args, "-ffp-contract=off"]
    _write_manifest()
    return extensions


setup(ext_modules=_native_extensions())
