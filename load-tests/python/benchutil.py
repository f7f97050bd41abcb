"""Timing shared by the reference sides of the benchmarks (the Rust sides time the same way:
services/trainer/src/bench.rs `best_of`)."""
import time


def best_of(fn, n):
    """The best mean time per call of `fn` over three rounds of `n` calls, after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best
