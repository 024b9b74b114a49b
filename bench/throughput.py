"""End-to-end sampling throughput: fastddpm vs diffusers vs a plain torch loop (one process).

    python bench/throughput.py --quick                       # minutes on 2 cores
    python bench/throughput.py --checkpoint runs/butterfly   # full sizes + quality table
    python bench/throughput.py --sections batch              # batch-size sweep (CPU default)

See fastddpm/benchmark.py for the sections and docs/sampling.md for results.
"""
import sys

from fastddpm.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
