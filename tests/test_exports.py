"""The public surface: what `executus` exports, and the standard-library-only core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import executus
from tests.helpers import newer_pythons

ROOT = Path(__file__).resolve().parents[1]


def test_all_names_exist_and_are_documented() -> None:
    """Every name in __all__ is importable, defined in executus and has a docstring."""
    for name in executus.__all__:
        obj = getattr(executus, name)
        assert getattr(obj, "__module__", "").startswith("executus"), name
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_design_names_are_exported() -> None:
    """The names the design contract fixes are exported from executus."""
    fixed = {
        "Lane", "FIFO", "Priority", "FairShare", "Preemption", "JobState", "current_job",
        "LaneError", "LaneClosed", "LaneBusy", "NotQueued", "JobCancelled", "JobPreempted",
        "DuplicateJob", "QueuePolicy", "JobHandle", "LaneStats",
    }  # fmt: skip
    assert fixed <= set(executus.__all__)


def test_core_imports_only_the_standard_library() -> None:
    """Importing executus and its core modules loads no third-party package."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_stdlib_core.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_import_is_silent_on_every_python_here() -> None:
    """``import executus`` prints nothing, warnings made errors, on this Python and on
    every newer one found on the machine (3.13 warns about an unawaited ``aclose()``)."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'src')!r}); import gc, executus; gc.collect()"
    )
    for exe in [sys.executable, *newer_pythons()]:
        run = subprocess.run(
            [exe, "-I", "-X", "dev", "-W", "error", "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (exe, run.returncode, run.stdout, run.stderr) == (exe, 0, "", "")
