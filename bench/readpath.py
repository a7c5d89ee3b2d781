"""Read path on a real GPU: migd's read verbs as cold processes vs nvidia-smi giving the same information.

Run on a GPU machine (read-only: MIGD_READ_ONLY=1 is set here for every migd call):
    python3 bench/readpath.py [--runs 10]
Prints median wall time per command and the ratio migd total / nvidia-smi total, both measured in this run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CONFIG = """
[[gpu]]
select = 0
mig = true
instances = { "1g" = 7 }
"""


def timed(cmd, env, runs):
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    env = dict(os.environ, MIGD_READ_ONLY="1")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(CONFIG)
    migd = [sys.executable, "-m", "migd.cli"]
    rows = [
        ("baseline: python -c pass", [sys.executable, "-c", "pass"], "base"),
        ("baseline: python -I -S -c pass", [sys.executable, "-I", "-S", "-c", "pass"], "base"),
        ("nvidia-smi mig -lgip", ["nvidia-smi", "mig", "-lgip"], "smi"),
        ("nvidia-smi mig -lgipp", ["nvidia-smi", "mig", "-lgipp"], "smi"),
        ("nvidia-smi -q -d MIG", ["nvidia-smi", "-q", "-d", "MIG"], "smi"),
        ("migd status --json", migd + ["status", "--json"], "migd"),
        ("migd profiles", migd + ["profiles"], "migd"),
        ("migd plan (7 × 1g)", migd + ["--config", f.name, "plan"], "migd"),
    ]
    totals = {"smi": 0.0, "migd": 0.0}
    print(f"{'command':<34}{'median ms':>10}")
    for label, cmd, group in rows:
        t = timed(cmd, env, args.runs)
        totals[group] = totals.get(group, 0.0) + t
        print(f"{label:<34}{t * 1000:>10.1f}")
    print(f"{'nvidia-smi total':<34}{totals['smi'] * 1000:>10.1f}")
    print(f"{'migd total':<34}{totals['migd'] * 1000:>10.1f}")
    print(f"ratio migd / nvidia-smi: {totals['migd'] / totals['smi']:.2f}x (goal <= 1.0x)")
    os.unlink(f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
