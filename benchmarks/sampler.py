"""Length-weighted sampling of 1,000,000 rows against polars sorting the same lengths.

Ranking needs a sort, so polars' own sort of the length column is the floor; the target is to
stay within 5x of it. Both are timed in this run (best of several rounds), and the extra peak
memory of the sampler over the data itself is printed.

    python benchmarks/sampler.py [--rows 1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import polars as pl

from selflengthen.builders.sample import length_weighted_sample

TARGET = 5.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frame = pl.DataFrame({"id": np.arange(args.rows), "words": rng.integers(50, 20_000, args.rows)})
    before = peak_rss_mib()
    kept = length_weighted_sample(frame, "words", seed=1)  # first call: memory and warm-up
    extra_peak = peak_rss_mib() - before

    sample_times, sort_times = [], []
    for round_index in range(args.rounds):
        start = time.perf_counter()
        frame.get_column("words").sort()
        sort_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        length_weighted_sample(frame, "words", seed=round_index)
        sample_times.append(time.perf_counter() - start)
    ratio = min(sample_times) / min(sort_times)
    print(f"length_weighted_sample on {args.rows:,} rows; target <= {TARGET:.0f}x polars sort")
    print(f"polars sort of the lengths   {min(sort_times) * 1e3:8.1f} ms")
    print(
        f"length_weighted_sample       {min(sample_times) * 1e3:8.1f} ms   ratio {ratio:.2f}x  "
        f"{'met' if ratio <= TARGET else 'MISSED'}"
    )
    print(
        f"kept {kept.height:,} rows ({kept.height / args.rows:.1%}); extra peak memory {extra_peak:.0f} MiB "
        f"(the frame itself: {frame.estimated_size('mb'):.0f} MiB; peak RSS {peak_rss_mib():.0f} MiB)"
    )


if __name__ == "__main__":
    main()
