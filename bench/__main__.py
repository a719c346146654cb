"""`python -m bench` (or `make bench`): every benchmark in turn; each prints its own numbers."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    ["bench.bench_dataverse_client"],
    ["bench.bench_bc_client"],
    ["bench.webhook_burst", "--entries", "1000"],
    ["bench.latency", "--rate", "20", "--seconds", "60"],
    ["bench.scale_out", "--rate", "30", "--seconds", "300", "--hosts", "3"],
    ["bench.initial_sync", "--customers", "100000"],
    ["bench.stock", "--items", "20000", "--moved", "5000"],
    ["bench.bare_collection", "--customers", "100000", "--changes", "1500", "--deletes", "10"],
]


def main() -> int:
    failed = 0
    for args in BENCHMARKS:
        print(f"\n=== python -m {' '.join(args)}", flush=True)
        failed += subprocess.call([sys.executable, "-m", *args]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
