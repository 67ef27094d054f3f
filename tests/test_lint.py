"""CI enforces the habits: ``make test`` runs ``make lint`` (ruff, then mypy against the checked
baseline) before pytest; a new finding fails; a warning in a test is an error."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return str(path)


def test_make_test_runs_ruff_and_mypy_before_pytest():
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    out = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    ruff, mypy, pytest_ = (out.find(s) for s in ("ruff check", "mypy-baseline filter",
                                                  "-m pytest"))
    assert -1 < ruff < mypy < pytest_, out


def test_a_new_ruff_finding_fails(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f(x):\n    return x == None\n")  # F401, E711
    r = subprocess.run([tool("ruff"), "check", "--config", str(ROOT / "pyproject.toml"),
                        str(bad)], capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "F401" in r.stdout and "E711" in r.stdout


# Two findings as mypy-baseline stores them (line numbers dropped); the checked-in baseline is
# empty now that mypy is clean, so the mechanism is shown on a baseline of its own.
SAMPLE_BASELINE = [
    'ferry/a.py:0: error: Item "None" of "list[int] | None" has no attribute "append"  '
    '[union-attr]',
    'ferry/b.py:0: error: Argument 1 to "trim" has incompatible type "int | None"; expected '
    '"int"  [arg-type]',
]


def _filter(mypy_output: str, baseline: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("mypy-baseline"), "filter", "--baseline-path", str(baseline)],
                          input=mypy_output, cwd=ROOT, capture_output=True, text=True,
                          check=False)


def test_mypy_findings_in_the_baseline_pass_and_a_new_or_a_fixed_one_fails(tmp_path):
    baseline = tmp_path / "mypy-baseline.txt"
    baseline.write_text("\n".join(SAMPLE_BASELINE) + "\n")
    known = [line.replace(":0:", ":1:", 1) for line in SAMPLE_BASELINE]
    summary = f"Found {len(known)} errors in 2 files (checked 2 source files)\n"
    assert _filter("\n".join(known) + "\n" + summary, baseline).returncode == 0
    new = 'ferry/flags.py:9: error: Incompatible types in assignment (expression has type ' \
          '"str", variable has type "int")  [assignment]'
    r = _filter("\n".join([*known, new]) + "\n" + summary, baseline)
    assert r.returncode == 1 and "flags.py" in r.stdout
    fixed = known[:-1]  # as if the last one were fixed without syncing the baseline
    assert _filter("\n".join(fixed) + "\n" + summary, baseline).returncode != 0, \
        "the baseline is synced"


def test_the_checked_baseline_passes_a_clean_mypy_run():
    r = _filter("Success: no issues found in 1 source file\n", ROOT / "mypy-baseline.txt")
    assert r.returncode == 0, r.stdout


def test_a_warning_in_a_test_is_an_error():
    with pytest.raises(DeprecationWarning):
        warnings.warn("old", DeprecationWarning, stacklevel=1)
