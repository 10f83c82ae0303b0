"""``python -m bench [--smoke | --quick]``: run the benchmarks, write the results.

Writes ``docs/bench/results.json`` and ``docs/bench/bench.png`` and replaces the
``## Benchmarks`` section of README.md. ``--smoke`` writes into ``--out`` (default
``artifacts/bench-smoke``, which git ignores) and leaves the README alone unless ``--readme`` is
given, so a smoke run never replaces the published figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import report
from bench.suite import ROOT, SIZES, Suite, environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes (< 30 s), for the test")
    size.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument("--readme", type=Path, default=None, help="README to update")
    args = parser.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    default_out = ROOT / "artifacts" / "bench-smoke" if args.smoke else ROOT / "docs" / "bench"
    out: Path = args.out or default_out
    readme = args.readme or (None if args.smoke else ROOT / "README.md")
    started = time.monotonic()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(f"benchmarks ({name}): results into {out}")
    suite = Suite(name, log)
    rows = suite.run()
    results = {
        "size": name,
        "runs": SIZES[name].runs,
        "seconds": time.monotonic() - started,
        "environment": environment(),
        "rows": [r.as_dict() for r in rows],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    report.plot(results, out / "bench.png")
    command = "make bench" if name == "full" else f"python -m bench --{name}"
    if readme is not None:
        report.update_readme(readme, report.markdown(results, command))
    log(f"done in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
