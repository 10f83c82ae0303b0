"""The benchmark harness in its smoke size, so that it cannot rot (the benchmarks themselves
are never part of the tests: ``make bench``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[2]


# The timeouts only guard against a hang: the smoke run takes about 30 s on an idle machine, and
# several times that on a busy one.
@pytest.mark.timeout(900)
def test_smoke_run_writes_results_plot_and_readme_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n\nIntro.\n\n## Benchmarks\n\nold table\n\n## After\n\nkept\n")
    out = str(tmp_path / "bench")
    subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", out, "--readme", str(readme)],
        cwd=ROOT,
        check=True,
        timeout=880,
    )
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    groups = {row["group"] for row in results["rows"]}
    assert groups == {"throughput", "latency", "scale", "cancel", "first event"}
    for row in results["rows"]:
        assert row["ours"]["median"] > 0, row
        assert row["baselines"], row
    assert results["environment"]["loop"] == "uvloop"
    assert (tmp_path / "bench" / "bench.png").stat().st_size > 10_000
    text = readme.read_text()
    assert "old table" not in text
    assert text.count("## Benchmarks") == 1
    assert text.endswith("## After\n\nkept\n")
    assert "| throughput: 1 conn × 1 task, json |" in text


def test_readme_section_is_appended_when_absent(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n")
    report.update_readme(readme, "## Benchmarks\n\ntable\n")
    report.update_readme(readme, "## Benchmarks\n\nnew table\n")
    assert readme.read_text() == "# Project\n\n## Benchmarks\n\nnew table\n"
