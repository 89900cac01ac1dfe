"""The one benchmark method every script in ``benchmarks/`` uses.

* **warm-up**: every variant runs ``--warmup`` times (default 1) before anything is timed (lazy imports,
  allocator, caches that a real run would have warm);
* **alternation**: repeat r runs the variants in order A, B, … when r is even and in reverse order when r is odd,
  so a slow phase of a shared machine hits both sides alike and neither side is always first;
* **repeats**: ``--repeats`` (at least 3) timed runs of each variant; the **minimum** (the run least disturbed by
  other processes) and the **median** are printed;
* **load**: ``os.getloadavg()`` (1/5/15 minutes) is printed beside each figure, sampled right after that
  variant's runs, so a figure measured on a busy machine says so;
* ``--quick``: CI-sized inputs (each script decides what that means), same method.

Scripts print a header (:func:`header`) with the date, the command line, torch version, threads and load, then
one line per figure (:meth:`Timing.line`) and ratios (:func:`ratio_line`).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("REWARDLOOP_NO_TQDM", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

try:  # run as ``python benchmarks/x.py`` from the pack folder without PYTHONPATH
    import rewardloop  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
try:  # no per-save progress bars from transformers between the figures
    from rewardloop.weights.loaders import quiet_transformers
    quiet_transformers()
except ImportError:  # pragma: no cover
    pass

MIN_REPEATS = 3


def load() -> str:
    """The machine's load averages (1, 5, 15 minutes) as ``load 1.23/0.98/0.75``."""
    try:
        a, b, c = os.getloadavg()
        return f"load {a:.2f}/{b:.2f}/{c:.2f}"
    except OSError:  # pragma: no cover - platforms without getloadavg
        return "load n/a"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the method's options: ``--repeats``, ``--warmup``, ``--quick``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS,
                    help=f"timed runs of each variant (at least {MIN_REPEATS}; min and median are printed)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each variant first")
    ap.add_argument("--quick", action="store_true", help="CI-sized inputs (same method, smaller work)")
    return ap


def parse(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = ap.parse_args(argv)
    if args.repeats < MIN_REPEATS:
        ap.error(f"--repeats must be at least {MIN_REPEATS} (the method reports min and median of the repeats)")
    if args.warmup < 0:
        ap.error("--warmup cannot be negative")
    return args


def header(title: str, **facts) -> None:
    """Title, date, command, environment and load, one line each."""
    try:
        import torch
        env = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:  # pragma: no cover
        env = "no torch"
    print(f"== {title}")
    print(f"date {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}; "
          f"command: python {' '.join(sys.argv)}")
    print(f"python {platform.python_version()}, {env}, {os.cpu_count()} CPUs visible; {load()} at start")
    if facts:
        print("; ".join(f"{k} {v}" for k, v in facts.items()))


class Seconds(float):
    """Returned by a variant that timed its own relevant part (see :func:`compare`)."""


@dataclass
class Timing:
    name: str
    times: list[float] = field(default_factory=list)
    load: str = ""

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def line(self, unit: float = 1.0, unit_name: str = "s", width: int = 28) -> str:
        """``name   min 1.234 s  median 1.300 s  (n=3)  [load …]``; ``unit`` divides the times (per image…)."""
        return (f"{self.name:<{width}} min {self.min / unit:9.4f} {unit_name}  median {self.median / unit:9.4f} "
                f"{unit_name}  (n={len(self.times)})  [{self.load}]")


def compare(variants: Mapping[str, Callable[[], object]], repeats: int = MIN_REPEATS, warmup: int = 1,
            sync: Callable[[], None] | None = None, before: Callable[[str, int], None] | None = None
            ) -> dict[str, Timing]:
    """Time each variant ``repeats`` times after ``warmup`` untimed runs, alternating the order each repeat.

    ``sync`` is called before reading the clock (e.g. ``torch.cuda.synchronize``); ``before(name, r)`` runs
    untimed before each timed call (e.g. to give the call fresh, uncached input). A variant that returns a
    :class:`Seconds` reports its own timed part (e.g. training steps without the run's setup) instead of the
    wall time of the whole call."""
    names = list(variants)
    out = {n: Timing(n) for n in names}
    for _ in range(warmup):
        for n in names:
            variants[n]()
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            if before is not None:
                before(n, r)
            t0 = time.perf_counter()
            got = variants[n]()
            if sync is not None:
                sync()
            elapsed = time.perf_counter() - t0
            out[n].times.append(float(got) if isinstance(got, Seconds) else elapsed)
            out[n].load = load()
    return out


def measure(name: str, fn: Callable[[], object], repeats: int = MIN_REPEATS, warmup: int = 1,
            sync: Callable[[], None] | None = None) -> Timing:
    """One variant (figures that are not a side-by-side ratio)."""
    return compare({name: fn}, repeats, warmup, sync)[name]


def ratio_line(label: str, slow: Timing, fast: Timing) -> str:
    """``label: 2.31x (min/min), 2.25x (median/median)  [load …]`` — how many times faster ``fast`` is."""
    return (f"{label}: {slow.min / fast.min:.2f}x (min/min), {slow.median / fast.median:.2f}x (median/median)  "
            f"[{fast.load or load()}]")


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (``ru_maxrss``; kilobytes on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
