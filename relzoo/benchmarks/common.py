"""What every relzoo benchmark shares: interleaved median timings and peak memory, each measured around one call.

Times are medians over interleaved repeats (candidate and reference alternate, so drift hits both alike). Peak
memory is the high-water mark of tensor allocations recorded by the PyTorch profiler (CPU or GPU), relative to what
was allocated before the measured call.
"""
from __future__ import annotations

import statistics
import time

import torch

__all__ = ['peak_memory_bytes', 'peak_tracked_bytes', 'timed_medians', 'interleaved_bursts', 'spread',
           'ratios', 'sync_for']


def peak_memory_bytes(fn) -> int:
    """Peak extra bytes allocated by tensors while ``fn()`` runs (profiler allocation events, all threads)."""
    from torch.profiler import profile

    with profile(profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def peak_tracked_bytes(fn) -> int:
    """Peak bytes of the tensors created while ``fn()`` runs, followed through the dispatcher by torch's
    ``MemTracker`` (pre-existing tensors not counted). Used where the profiler itself cannot: profiling the
    per-query reference's backward pass (225k events) grows this process by about 20 GiB."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        fn()
    return int(sum(per_device["Total"] for per_device in tracker.get_tracker_snapshot("peak").values()))


def timed_medians(fns: dict, repeats: int, sync=lambda: None) -> dict:
    """Median seconds of each callable, run in interleaved rounds after one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def interleaved_bursts(fns: dict, rounds: int, burst: int, warmup: int = 1, sync=lambda: None) -> dict:
    """Seconds per call of each callable in every round: ``{name: [mean over the round's burst, ...]}``.

    A round runs ``burst`` consecutive calls of each callable in turn (steady state within a model, as timm's
    benchmark.py measures), and the order rotates from round to round, so that drift of a noisy machine reaches every
    callable alike and ratios can be taken within one round. ``warmup`` calls of each precede the first round.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync()
            t0 = time.perf_counter()
            for _ in range(burst):
                fns[name]()
            sync()
            times[name].append((time.perf_counter() - t0) / burst)
    return times


def spread(values) -> tuple[float, float, float]:
    """(median, min, max) of a list of per-round measurements."""
    values = list(values)
    return statistics.median(values), min(values), max(values)


def ratios(candidate: list[float], reference: list[float]) -> list[float]:
    """Per-round speed ratios ``reference time / candidate time`` (> 1: the candidate is faster)."""
    return [r / c for c, r in zip(candidate, reference)]


def sync_for(device):
    return (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
