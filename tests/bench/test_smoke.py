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


# The timeouts only guard against a hang: the smoke run takes under a minute on an idle machine,
# and several times that on a busy one.
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
    assert groups == {
        "throughput",
        "latency",
        "scale",
        "cancel",
        "first event",
        "capacity",
        "redis",
    }
    for row in results["rows"]:
        # A capacity figure may be 0 on a badly overloaded machine; its steps are checked below.
        assert row["ours"]["median"] > 0 or row["group"] == "capacity", row
        assert row["baselines"], row
    # The capacity sweeps ran real steps for every server, each measured by two
    # load-generator processes over one window, and events were delivered in it.
    capacity = [row for row in results["rows"] if row["group"] == "capacity"]
    assert [set(row["detail"]) for row in capacity] == [
        {"ours", "socket.io", "SSE", "raw"},
        {"ours, Redis mode", "ours", "socket.io", "SSE", "raw"},
    ]
    for sweep in capacity[1]["detail"].values():
        assert sweep["steps"], sweep
        for step in sweep["steps"]:
            assert step["client_procs"] == min(2, step["conns"]), step
            assert step["ok"] == (step["why"] == ""), step
        assert max(step["delivered"] for step in sweep["steps"]) > 0, sweep
    redis_rows = {row["case"].split(",")[0] for row in results["rows"] if row["group"] == "redis"}
    assert redis_rows == {
        "throughput",
        "CPU per event (gateway + redis-server)",
        "delivery latency",
        "resume: subscribe on gateway B → first replayed event",
        "cancel on gateway B → `task_cancelled` on B",
    }
    assert results["environment"]["loop"] == "uvloop"
    assert (tmp_path / "bench" / "bench.png").stat().st_size > 10_000
    text = readme.read_text()
    assert "old table" not in text
    assert text.count("## Benchmarks") == 1
    assert text.endswith("## After\n\nkept\n")
    assert "| throughput: 1 conn × 1 task, json |" in text
    assert "| capacity: tasks streaming ~50 tokens/s each" in text


def test_readme_section_is_appended_when_absent(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n")
    report.update_readme(readme, "## Benchmarks\n\ntable\n")
    report.update_readme(readme, "## Benchmarks\n\nnew table\n")
    assert readme.read_text() == "# Project\n\n## Benchmarks\n\nnew table\n"
