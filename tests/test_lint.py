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


def _filter(mypy_output: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("mypy-baseline"), "filter"], input=mypy_output, cwd=ROOT,
                          capture_output=True, text=True, check=False)


def test_mypy_findings_in_the_baseline_pass_and_a_new_or_a_fixed_one_fails():
    known = [line.replace(":0:", ":1:", 1) for line in
             (ROOT / "mypy-baseline.txt").read_text().splitlines() if line.strip()]
    assert any(": error: " in line for line in known), "the baseline lists today's findings"
    summary = f"Found {len(known)} errors in 1 file (checked 1 source file)\n"
    assert _filter("\n".join(known) + "\n" + summary).returncode == 0
    new = 'ferry/flags.py:9: error: Incompatible types in assignment (expression has type ' \
          '"str", variable has type "int")  [assignment]'
    r = _filter("\n".join([*known, new]) + "\n" + summary)
    assert r.returncode == 1 and "flags.py" in r.stdout
    gone = next(line for line in reversed(known) if ": error: " in line)  # as if fixed
    fixed = [line for line in known if line != gone]
    assert _filter("\n".join(fixed) + "\n" + summary).returncode != 0, "the baseline is synced"


def test_a_warning_in_a_test_is_an_error():
    with pytest.raises(DeprecationWarning):
        warnings.warn("old", DeprecationWarning, stacklevel=1)
