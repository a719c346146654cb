"""`python -m bench` (or `make bench`): every benchmark in turn; each prints its own numbers."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    ["bench.bench_dataverse_client"],
    ["bench.bench_bc_client"],
    ["bench.webhook_burst", "--entries", "1000"],
    ["bench.latency", "--rate", "20", "--seconds", "60"],
    ["bench.burst", "--accounts", "10000"],
    ["bench.burst", "--rate", "100", "--seconds", "300", "--side", "both"],  # issue 20's target
    ["bench.burst", "--rate", "20", "--seconds", "300", "--side", "both"],  # what one process keeps up with
    ["bench.scale_out", "--rate", "30", "--seconds", "300", "--hosts", "3"],
    ["bench.initial_sync", "--customers", "100000"],
    ["bench.stock", "--items", "20000", "--moved", "5000"],
    ["bench.bare_collection", "--customers", "100000", "--changes", "1500", "--deletes", "10"],
    ["bench.documents", "--invoices", "10000", "--lines", "10", "--order-lines", "50"],
]


def main() -> int:
    """`--quick`: the burst benches small (1,000 accounts; 30 s), the others as they are."""
    quick = "--quick" in sys.argv[1:]
    failed = 0
    for args in BENCHMARKS:
        if quick and args[0] == "bench.burst":
            args = [*args, "--quick"]
        print(f"\n=== python -m {' '.join(args)}", flush=True)
        failed += subprocess.call([sys.executable, "-m", *args]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
