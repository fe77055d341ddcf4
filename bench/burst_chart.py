"""The chart of one burst phase: backlog, instances and quota cap per function over time.

Drawn on matplotlib's Agg canvas directly (no pyplot global state, no display needed) from a
:class:`bench.burst.PhaseResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.burst_phase import PhaseResult

PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def chart(result: PhaseResult, path: Path) -> None:
    """Backlog, instances and quota cap per function over time, with the events marked."""
    spec = result.spec
    functions = result.functions()
    colors = dict(zip(functions, PALETTE * 2, strict=False))
    # The Agg canvas directly: no pyplot global state, no display needed.
    fig = Figure(figsize=(11, 9))
    FigureCanvasAgg(fig)
    top, middle, bottom = fig.subplots(3, 1, sharex=True, height_ratios=[3, 2.2, 1.4])
    clip = spec.limits.max_instances + 1
    for function in functions:
        color = colors[function]
        ts, ys = result.series("backlog", function)
        top.plot(ts, ys, color=color, label=function, linewidth=1.6)
        ts, ys = result.series("instances", function)
        middle.step(ts, ys, where="post", color=color, label=function, linewidth=1.8)
        ts, caps = result.series("quotaCap", function)
        _, backlog = result.series("backlog", function)
        if caps:
            shown = [
                min(c, clip) if b > 0 else float("nan") for c, b in zip(caps, backlog, strict=False)
            ]
            bottom.step(ts, shown, where="post", color=color, label=function, linewidth=1.6)
    middle.axhline(spec.limits.max_instances, color="grey", linestyle="--", linewidth=1)
    bottom.axhline(spec.limits.max_instances, color="grey", linestyle="--", linewidth=1)
    _mark_events(result, top, (top, middle, bottom))
    _style_axes(result, top, middle, bottom, clip)
    cap_note = "" if spec.quota_aware else " (quota cap off)"
    fig.suptitle(
        f"devhost burst, {spec.name} phase{cap_note}: {spec.conversations} conversations, "
        f"{spec.latency_ms:g} ms per model call, {spec.tpm:,} TPM per deployment, "
        f"cooldown {spec.limits.cooldown_s:g} s",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _mark_events(result: PhaseResult, top: Axes, axes: Sequence[Axes]) -> None:
    """A vertical line on every axis at the burst, the scale-out, the drain and the return to
    zero, labelled on the top axis."""
    events = [("burst", 0.0)]
    _, _, scaled = result.scaled_out_s()
    if scaled is not None:
        events.append(("scaled out", scaled))
    if result.drained_s is not None:
        events.append(("drained", result.drained_s))
    if result.zero_s is not None:
        events.append(("back to zero", result.zero_s))
    for n, (label, at) in enumerate(events):
        for axis in axes:
            axis.axvline(at, color="black", linewidth=0.8, alpha=0.4)
        top.annotate(
            f"{label}\n{at:.1f} s",
            # Alternate heights: two events a second apart would otherwise overprint.
            xy=(at, 1.0 if n % 2 == 0 else 0.86),
            xycoords=("data", "axes fraction"),
            xytext=(3, -4),
            textcoords="offset points",
            va="top",
            fontsize=8,
        )


def _style_axes(result: PhaseResult, top: Axes, middle: Axes, bottom: Axes, clip: int) -> None:
    """Limits, scales, labels, legend and notes of the three axes."""
    spec = result.spec
    end = max((s["t"] - result.burst_at for s in result.history), default=1.0)
    top.set_xlim(-1.0, end * 1.08 + 2.0)
    top.set_ylabel("backlog\n(messages / events)")
    top.set_yscale("symlog", linthresh=10)
    top.set_ylim(bottom=0)
    top.legend(loc="center right", fontsize=8)
    top.grid(alpha=0.3)
    middle.set_ylabel("instances\n(worker processes)")
    middle.set_ylim(-0.2, clip - 0.2)
    middle.grid(alpha=0.3)
    middle.text(
        0.995,
        0.97,
        "dashed: max per function",
        transform=middle.transAxes,
        ha="right",
        va="top",
        fontsize=8,
        color="grey",
    )
    bottom.set_ylabel(f"quota cap\n(while busy, clipped at {clip})")
    if not spec.quota_aware:
        bottom.text(0.5, 0.5, "quota cap off", transform=bottom.transAxes, ha="center", va="center")
    bottom.set_ylim(0, clip + 0.5)
    bottom.set_xlabel("seconds since the burst was posted")
    bottom.grid(alpha=0.3)
