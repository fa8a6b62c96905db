"""Run the benchmarks: `python -m bench [NAME ...] [--OPTION ...]` (NAME as in bench_NAME.py).

With no NAME, every benchmark but the 10-minute soak, which runs on its own (`make soak`).
Options after one NAME go to that bench's `main(argv)` (`python -m bench utility --help`).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from pathlib import Path

ON_THEIR_OWN = {"bench_soak"}


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    split = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    names, options = argv[:split], argv[split:]
    if options and len(names) != 1:
        print("options go to one bench: python -m bench NAME --OPTION ...", file=sys.stderr)
        return 2
    every = sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py") if p.stem not in ON_THEIR_OWN)
    names = names or every
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"\n## {name}")
        started = time.perf_counter()
        if options:
            module.main(options)
        else:
            module.main()
        print(f"({name}: {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
