"""CallSeries counts every call exactly, from many threads at once, without a lock on the hot path."""

from __future__ import annotations

import threading

from karen_hooks._metrics import _FOLD_AT, DURATION_BUCKETS, CallSeries


def test_concurrent_calls_are_all_counted_and_in_flight_never_goes_negative() -> None:
    series = CallSeries("p", "i")
    threads, per_thread = 8, 3 * _FOLD_AT + 7  # several folds on the hot path, and a remainder
    go = threading.Barrier(threads + 1)
    seen_negative = []

    def caller(n: int) -> None:
        go.wait()
        for k in range(per_thread):
            series.start()
            series.finish("ok" if k % 3 else "error", 0.002 if n % 2 else 0.3)

    def scraper() -> None:
        go.wait()
        for _ in range(200):
            flying, _counts, _buckets, _total = series.snapshot()
            if flying < 0:
                seen_negative.append(flying)

    workers = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
    workers.append(threading.Thread(target=scraper))
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    flying, counts, buckets, total = series.snapshot()
    calls = threads * per_thread
    assert seen_negative == []
    assert flying == 0
    assert sum(counts.values()) == calls
    assert counts["error"] == threads * len(range(0, per_thread, 3))
    assert sum(buckets) == calls
    # 0.002 s falls in the 0.0025 bucket, 0.3 s in the 0.5 bucket; half the threads each
    assert buckets[DURATION_BUCKETS.index(0.0025)] == calls // 2
    assert buckets[DURATION_BUCKETS.index(0.5)] == calls // 2
    assert abs(total - (calls // 2) * (0.002 + 0.3)) < 1e-6 * calls


def test_a_call_in_flight_is_seen_by_a_scrape() -> None:
    series = CallSeries("p", "i")
    series.start()
    assert series.snapshot()[0] == 1
    series.finish("timeout", 61.0)  # past the last bound: the +Inf bucket
    flying, counts, buckets, total = series.snapshot()
    assert (flying, counts["timeout"], buckets[-1], total) == (0, 1, 1, 61.0)

