"""``python -m bench [--smoke | --quick] [--only PARTS]``: run the benchmarks, write the
results.

Writes ``docs/bench/results.json`` and ``docs/bench/bench.png`` and replaces the
``## Benchmarks`` section of README.md. ``--smoke`` writes into ``--out`` (default
``artifacts/bench-smoke``, which git ignores) and leaves the README alone unless ``--readme`` is
given, so a smoke run never replaces the published figures. ``--only capacity,redis`` runs
some parts of the suite (see :data:`bench.suite.STEPS`); such a run writes into
``artifacts/bench-only`` and leaves the README alone unless ``--out``/``--readme`` say
otherwise, since its table would lack the other rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import report
from bench.suite import ROOT, SIZES, STEPS, Suite, environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes (< 1 min), for the test")
    size.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument("--readme", type=Path, default=None, help="README to update")
    parser.add_argument(
        "--only",
        default=",".join(STEPS),
        help=f"comma-separated parts to run (default: all of {','.join(STEPS)})",
    )
    args = parser.parse_args(argv)
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(only) - set(STEPS))
    if unknown or not only:
        parser.error(f"--only: unknown part(s) {unknown}; choose among {', '.join(STEPS)}")
    partial = set(only) != set(STEPS)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.smoke:
        default_out = ROOT / "artifacts" / "bench-smoke"
    elif partial:
        default_out = ROOT / "artifacts" / "bench-only"
    else:
        default_out = ROOT / "docs" / "bench"
    out: Path = args.out or default_out
    readme = args.readme or (None if args.smoke or partial else ROOT / "README.md")
    started = time.monotonic()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(f"benchmarks ({name}{', ' + ','.join(only) if partial else ''}): results into {out}")
    suite = Suite(name, log, only)
    rows = suite.run()
    results = {
        "size": name,
        "parts": only,
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
