"""Benchmark results: printed, and written as markdown under benchmarks/results/."""
from __future__ import annotations


def publish(text: str, path: str) -> None:
    """Print ``text`` and write it to ``path`` (the committed copy of the latest run)."""
    print(text)
    with open(path, "w") as f:
        f.write(text + "\n")
    print(f"\nwrote {path}")
