"""End-to-end sampling throughput: fastddpm vs diffusers vs a plain torch loop (one process).

    python bench/throughput.py --quick                       # minutes on 2 cores
    python bench/throughput.py --checkpoint runs/butterfly   # full sizes + quality table
    python bench/throughput.py --sections batch              # batch-size sweep (CPU default)
    python bench/throughput.py --quick --json rows.json      # also write the rows

The same as ``fastddpm bench ARGS`` (fastddpm/cli/bench.py); the sections are in
fastddpm/benchmark.py and the results in docs/sampling.md.
"""
import sys

from fastddpm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
