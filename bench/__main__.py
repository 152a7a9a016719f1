"""`python -m bench NAME [ARGS...]` (or `make bench ARGS="NAME ..."`): run bench/NAME_bench.py.

python -m bench cryptofeed --rates 500,1000,2500
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCHMARKS = sorted(p.stem.removesuffix("_bench") for p in Path(__file__).parent.glob("*_bench.py"))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        raise SystemExit(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [ARGS...] (--help for each)")
    name = sys.argv[1]
    module = importlib.import_module(f"bench.{name}_bench")
    sys.argv = [f"bench.{name}_bench", *sys.argv[2:]]  # each benchmark parses sys.argv itself
    module.main()


if __name__ == "__main__":
    main()
