"""Steady-state overhead with and without the worker template, quiet and under CPU contention,
side by side in one run.

    .venv/bin/python -m bench.contention                      # 200 conversations per run
    .venv/bin/python -m bench.contention --conversations 1000 # the full bench.pipeline size

Runs ``bench.pipeline`` (open-loop at ``--rate``, fixed simulated latency, warm-up first) four
times in a row: workers started as their own interpreters (``DEVHOST_PREFORK=0``) and forked
from the template, each on a quiet machine and with a CPU hog (a busy loop pinned to CPU 0 with
``sched_setaffinity``, the "other CPU-bound process on one core" of the issue). Each line
prints the overhead ratio (end-to-end over model time on the path, as bench.pipeline defines
it), the broker hop and the CPU other programs took meanwhile; the last lines print the
template-on over template-off ratio of the P95s, quiet and under the hog.

``--profile`` profiles every worker's event-loop thread (cProfile, ``DEVHOST_PROFILE``), prints
the five functions that cost the workers most CPU of their own per run (``tottime``, summed
over the workers; waits such as the event loop's idle ``epoll`` are left out) and, where
``flameprof`` is installed, writes the summed profile as a flame graph SVG to ``docs/bench/``.
A spawned worker is profiled from its ``main`` on, so its imports count; a forked one from the
fork on. Profiling slows the workers several times over: its ratios are not the unprofiled
ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.pipeline import OUT, RATIO_DEFINITION, BenchOptions, Summary, run, summarise
from bench.stats import percentile
from devhost.environment import PROJECT_ROOT
from devhost.prefork import PREFORK_ENV
from devhost.worker import PROFILE_ENV

HOG = "while True:\n    pass\n"


@dataclass(frozen=True)
class Config:
    prefork: bool
    hog: bool

    @property
    def name(self) -> str:
        return f"{'prefork' if self.prefork else 'spawn'}{'+hog' if self.hog else ''}"


@contextlib.contextmanager
def cpu_hog(enabled: bool, cpu: int = 0) -> Iterator[None]:
    """A busy loop pinned to ``cpu`` while the block runs (nothing when not ``enabled``)."""
    if not enabled:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        yield
    finally:
        hog.kill()
        hog.wait()


WAITS = ("'poll' of 'select.", "'select' of 'select.", "time.sleep", "'acquire' of '_thread.")
"""Functions whose own time is waiting (the event loop's idle poll, a lock), not CPU."""


def _waiting(name: str) -> bool:
    return any(wait in name for wait in WAITS)


def top_costs(directory: Path, count: int = 5) -> tuple[pstats.Stats | None, list[str]]:
    """The workers' profiles summed; the ``count`` functions with the most own time."""
    files = sorted(str(p) for p in directory.glob("*.prof"))
    if not files:
        return None, []
    stats = pstats.Stats(*files)
    everything = stats.stats.items()  # type: ignore[attr-defined]
    busy = [(key, row) for key, row in everything if not _waiting(key[2])]
    total = sum(row[2] for _, row in busy)
    rows = sorted(busy, key=lambda item: item[1][2], reverse=True)
    lines = []
    for (filename, line, name), (_, calls, own, _cum, _) in rows[:count]:
        where = filename.replace(str(PROJECT_ROOT) + "/", "")
        if "site-packages/" in where:
            where = where.split("site-packages/", 1)[1]
        share = 100 * own / max(total, 1e-9)
        lines.append(f"{own:7.2f} s {share:5.1f} %  {calls:>8}  {name} ({where}:{line})")
    return stats, lines


def flame_graph(stats: pstats.Stats, target: Path) -> bool:
    """Write ``stats`` as a flame graph SVG with flameprof, when it is installed."""
    try:
        flameprof = importlib.import_module("flameprof")
    except ImportError:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        flameprof.render(stats.stats, out)  # type: ignore[attr-defined]
    return True


def measure(config: Config, args: argparse.Namespace, root_name: str) -> tuple[Summary, str]:
    """One bench.pipeline run in ``config``; its summary and its printed line."""
    os.environ[PREFORK_ENV] = "1" if config.prefork else "0"
    profile_dir = OUT / root_name / f"{config.name}-profile"
    if args.profile:
        os.environ[PROFILE_ENV] = str(profile_dir)
    else:
        os.environ.pop(PROFILE_ENV, None)
    options = BenchOptions(
        conversations=args.conversations,
        rate=args.rate,
        latency_ms=args.latency_ms,
        warmup=args.warmup,
        workdir=OUT / root_name / config.name,
    )
    with cpu_hog(config.hog):
        record = asyncio.run(run(options))
    summary = summarise(record)
    summary_others = record.cpu.others_s / max(record.cpu.wall_s, 1e-9)
    line = (
        f"{config.name:<14} {summary.finished:>4}/{summary.expected:<4} "
        f"{percentile(summary.ratios, 0.5):>6.2f} {percentile(summary.ratios, 0.95):>6.2f} "
        f"{percentile(summary.broker_hops_ms.get('all', []), 0.5):>8.1f} "
        f"{percentile(summary.broker_hops_ms.get('all', []), 0.95):>8.1f} "
        f"{percentile(summary.e2e_s, 0.95):>8.2f} {summary_others:>8.2f}"
    )
    if args.profile:
        stats, costs = top_costs(profile_dir)
        line += "\n" + "\n".join(f"    {c}" for c in costs)
        svg = PROJECT_ROOT / "docs" / "bench" / f"workers-{config.name}.svg"
        if stats is not None and flame_graph(stats, svg):
            line += f"\n    flame graph: {svg.relative_to(PROJECT_ROOT)}"
    return summary, line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.contention", description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--no-hog", action="store_true", help="quiet runs only")
    parser.add_argument("--profile", action="store_true", help="cProfile the workers")
    parser.add_argument("--repeat", type=int, default=1, help="runs per config, interleaved")
    args = parser.parse_args(argv)
    root_name = f"contention-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    hogs = (False,) if args.no_hog else (False, True)
    configs = [
        (repeat, Config(prefork, hog))
        for repeat in range(args.repeat)
        for hog in hogs
        for prefork in (False, True)
    ]
    results: list[tuple[Config, Summary, str]] = []
    for repeat, config in configs:
        print(f"run {config.name} ...", flush=True)
        results.append((config, *measure(config, args, f"{root_name}/{repeat}")))
    print()
    print(RATIO_DEFINITION)
    print(
        f"{args.conversations} conversations at {args.rate:g}/s, {args.latency_ms:g} ms per call, "
        f"{os.cpu_count()} CPUs; hog = a busy loop pinned to CPU 0"
    )
    print(
        f"{'config':<14} {'done':>9} {'P50':>6} {'P95':>6} {'hop P50':>8} {'hop P95':>8} "
        f"{'e2e P95':>8} {'others':>8}"
    )
    print(f"{'':<14} {'':>9} {'ratio':>6} {'ratio':>6} {'ms':>8} {'ms':>8} {'s':>8} {'CPUs':>8}")
    for _, _, line in results:
        print(line)
    p95s: dict[str, list[float]] = {}
    for config, summary, _ in results:
        if summary.ratios:
            p95s.setdefault(config.name, []).append(percentile(summary.ratios, 0.95))
    for suffix in ("", "+hog"):
        on, off = p95s.get(f"prefork{suffix}"), p95s.get(f"spawn{suffix}")
        if on and off:
            print(
                f"prefork / spawn{suffix or ' (quiet)'}: ratio P95, median of {len(on)} run(s) "
                f"each: {statistics.median(on) / statistics.median(off):.2f}"
            )
    return 0 if all(s.finished == s.expected for _, s, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
