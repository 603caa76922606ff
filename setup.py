"""Build hook: compile the scoring core to C with mypyc, when it can.

The modules in :data:`NATIVE_MODULES` are the per-event path of the worker (decode,
conditions, features, labels, state, scoring) and the trainer's per-example path (the
learner, its metrics, promotion and publication). mypyc compiles their typed,
pure Python into a C extension that runs the same code about twice as fast; the Python
sources stay the reference and are what runs whenever the extension is missing, out of
date or turned off (``models/__init__.py`` decides at import time).

- ``CUSTOMER_AI_NATIVE=0`` at build time skips compilation (a pure-Python install).
- A failed compilation (no C compiler, say) is not an error: the extensions are
  optional and the install falls back to pure Python.
- ``CUSTOMER_AI_REQUIRE_NATIVE=1`` (CI and the Docker image) makes the compiled core
  required: no mypyc, a type error mypyc refuses or a failed C compile or link then fails
  the install with a message saying what to fix, never a silent pure-Python install.
- Next to the extensions the build writes ``models/_native_sources.py``: the SHA-256 of
  each compiled source. An extension whose source changed since is not used.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
#: CUSTOMER_AI_REQUIRE_NATIVE=1: a core that cannot be compiled fails the install
REQUIRE_NATIVE = os.environ.get("CUSTOMER_AI_REQUIRE_NATIVE", "0") == "1"
#: compiled together (one shared library): they call each other natively
NATIVE_MODULES = [
    "rounding",
    "conditions",
    "config_types",
    "events",
    "labels",
    "state",
    "features",
    "model",
    "logistic",
    "profile",
    "factors",
    "outcome",
    "explain",
    "engine",
    "messages",
    "metrics",
    "learner",
    "training",
    "sample",
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
    # every extension, not only those of NATIVE_MODULES: one of a module compiled by an
    # earlier build and no longer listed would shadow its Python source
    for old in (ROOT / "models").glob("*.so"):
        old.unlink()
    for old in ROOT.glob(f"{GROUP}__mypyc.*.so"):
        old.unlink()


def _required(problem: str, fix: str) -> SystemExit:
    """The error that ends a build which must compile the core (CUSTOMER_AI_REQUIRE_NATIVE=1)."""
    return SystemExit(
        f"CUSTOMER_AI_REQUIRE_NATIVE=1 and the scoring core was not compiled: {problem}. {fix}; "
        "or unset CUSTOMER_AI_REQUIRE_NATIVE to install the pure-Python core (slower)."
    )


class _BuildExt(build_ext):
    """``build_ext`` that names the fix when a required compiled core fails to build."""

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, a missing compiler
            if not REQUIRE_NATIVE:
                raise  # optional: setuptools warns and the core stays pure Python
            raise _required(
                f"building {ext.name} failed ({exc})",
                "Install a C compiler and the Python headers (Debian/Ubuntu: apt-get "
                "install build-essential python3-dev) or fix the compiler named by CC",
            ) from exc


def _native_extensions() -> list:
    _remove_previous_build()
    if os.environ.get("CUSTOMER_AI_NATIVE", "1") == "0":
        if REQUIRE_NATIVE:
            raise _required(
                "CUSTOMER_AI_NATIVE=0 turns compilation off", "Unset CUSTOMER_AI_NATIVE"
            )
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        if REQUIRE_NATIVE:
            raise _required(
                "mypyc is not installed in the build environment",
                "Install mypy there (pyproject.toml's [build-system] requires it)",
            ) from None
        print("mypyc not available: installing the pure-Python core", file=sys.stderr)
        return []
    try:
        extensions = mypycify(
            [f"models/{name}.py" for name in NATIVE_MODULES],
            opt_level="3",
            group_name=GROUP,
        )
    except (Exception, SystemExit) as exc:  # a type error mypyc refuses: stay pure Python
        if REQUIRE_NATIVE:
            raise _required(
                f"mypyc refused the core ({exc!r})",
                "Fix the type errors it printed above, or install the mypy that "
                "requirements.lock pins (pip install --build-constraint requirements.lock)",
            ) from exc
        print(
            f"mypyc could not compile the core ({exc!r}): installing pure Python", file=sys.stderr
        )
        return []
    for extension in extensions:
        # no compiler: fall back to the Python sources, unless the compiled core is required
        extension.optional = not REQUIRE_NATIVE
        # the same IEEE doubles as CPython: no fused multiply-adds
        if sys.platform != "win32":
            extension.extra_compile_args = [*extension.extra_compile_args, "-ffp-contract=off"]
    _write_manifest()
    return extensions


setup(ext_modules=_native_extensions(), cmdclass={"build_ext": _BuildExt})
