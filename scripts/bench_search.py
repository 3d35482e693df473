"""Synthetic search benchmark: planted best choices, every variant, several seeds.

Example: ``python scripts/bench_search.py --settings measured clear null --seeds 0 1 2``
(writes results/search/runs.csv, summary.csv, table.md and entropy.png).
"""

from flwr_pfedrlnas.experiments.search_bench_output import main

if __name__ == "__main__":
    main()
