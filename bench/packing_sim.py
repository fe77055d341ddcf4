"""How full whole calls can keep a token window: admission policies side by side, in simulated time.

    python -m bench.packing_sim                    # 3, 10, 50 and 200 users, ten simulated minutes
    python -m bench.packing_sim --size-spread 0.1  # each call's size drawn within +/- 10 %

At 10,000 TPM under Azure's accounting a window holds 1,666 tokens and the bench's conversation
makes calls of 210, 350 and 220 (``bench.quota_load.CALLS``): 13-21 % of a window each. Closed-loop
users (no think time, 300 ms per answer) call the simulator's own Azure rate limiter
(``devhost.simulator.ratelimit``, the server) through four admission policies:

* ``fifo``: a central scheduler with perfect knowledge of the server's window sends the oldest
  waiting call as soon as the server has room for it;
* ``best-fit``: the same scheduler sends the largest waiting call that fits the room now, the
  oldest first among equals: what any policy admitting calls as soon as they fit can do best;
* ``limiter``: every user plans through ``shared.llm.limiter.DeploymentQuota`` (its guard,
  pacing, request windows and size-aware admission), as ``GuardedChatModel`` does; a call that
  cannot be served within the 10 s wait budget comes back when ``defer`` says;
* ``repeat``: the fullest window whose mix repeats from window to window
  (``bench.packing_bound.fullest_repeating_window``: whole conversations, two at 10,000 TPM,
  1,560 of 1,666 tokens); any policy that settles into one mix is held to it;
* ``ideal``: the linear-programme bound of ``bench.packing_bound`` (no order of whole calls in
  the conversation's proportions holds more on average; it needs the window's mix to alternate
  between sets such as 3 x 210 + 3 x 220 + 350 and 210 + 4 x 350, which no policy above aims at).

Each prints the tokens the server charged after a minute's warm-up as a share of the TPM, and
the server's refusals (429s). Deterministic: the same figures on every machine.
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections.abc import Sequence

from bench import quota_load
from bench.packing_bound import fullest_mean_window, fullest_repeating_window
from bench.quota_sim import CellSpec, simulate, spread_size
from devhost.simulator.accounting import AZURE
from devhost.simulator.ratelimit import DeploymentLimiter

TPM = 10_000
CALLS = tuple((prompt, max_tokens) for _, prompt, max_tokens in quota_load.CALLS)
LATENCY_S = quota_load.LATENCY_MS / 1000.0
WARMUP_S = 60.0


def _share(charged: int, duration_s: float) -> float:
    return charged / (TPM / 60.0 * (duration_s - WARMUP_S))


def central(
    users: int, *, best_fit: bool, duration_s: float = 600.0, size_spread: float = 0.0
) -> tuple[float, int]:
    """A scheduler that sees the server's room exactly: the oldest waiting call, or the
    largest that fits, goes as soon as the server has room; calls sized as
    ``bench.quota_sim`` sizes them with ``size_spread``. (share of the TPM, 429s)"""
    now = 0.0
    server = DeploymentLimiter(tpm=TPM, rpm=6 * TPM // 1000, clock=lambda: now, profile=AZURE)
    rng, sizes = random.Random(1), random.Random(2)

    def charge_of(step: int) -> int:
        return sum(spread_size(*CALLS[step % len(CALLS)], size_spread, sizes))

    waiting: list[tuple[float, int, int, int]] = []  # (since, user, step, charge)
    # (at, user or -1 for a wake-up, step, charge)
    events = [(rng.random(), user, 0, charge_of(0)) for user in range(users)]
    heapq.heapify(events)
    charged = 0
    while events:
        now, user, step, charge = heapq.heappop(events)
        if now > duration_s:
            break
        if user >= 0:
            waiting.append((now, user, step, charge))
        while waiting:
            room = server.peek()
            if room.remaining_requests < 1:
                break
            fits = [w for w in waiting if w[3] <= room.remaining_tokens]
            if best_fit:
                chosen = max(fits, key=lambda w: (w[3], -w[0]), default=None)
            else:
                chosen = min(waiting) if min(waiting) in fits else None
            if chosen is None:
                break
            assert server.try_acquire(chosen[3]).admitted
            waiting.remove(chosen)
            charged += chosen[3] if now > WARMUP_S else 0
            following = chosen[2] + 1
            heapq.heappush(events, (now + LATENCY_S, chosen[1], following, charge_of(following)))
        if waiting:
            # Wake when the call that could go next fits: the oldest, or the smallest.
            nxt = min(w[3] for w in waiting) if best_fit else min(waiting)[3]
            wait_ms = max(server.peek(nxt).retry_after_ms, 1)
            heapq.heappush(events, (now + wait_ms / 1000.0, -1, 0, 0))
    return _share(charged, duration_s), 0


def limiter(
    users: int, *, size_aware: bool = True, duration_s: float = 600.0, size_spread: float = 0.0
) -> tuple[float, int]:
    """Every user plans through ``DeploymentQuota`` against the server, as the guarded client
    does (``bench.quota_sim``); a call that cannot be served within the wait budget comes back
    when ``defer`` says. (share of the TPM, 429s)"""
    spec = CellSpec(
        AZURE,
        TPM,
        users,
        WARMUP_S,
        duration_s - WARMUP_S,
        size_aware=size_aware,
        size_spread=size_spread,
    )
    tally = simulate(spec)
    charged = sum(charge for at, charge in tally.kept if at > WARMUP_S)
    return _share(charged, duration_s), tally.throttled


def ideal() -> float:
    """The LP bound for the conversation's calls against one window (no guard)."""
    return fullest_mean_window([p + m for p, m in CALLS], AZURE.token_capacity(TPM)) * (
        AZURE.token_capacity(TPM) / (TPM / 6.0)
    )


def repeating() -> float:
    """The fullest window whose mix of calls repeats, as a share of the TPM (no guard)."""
    limit = AZURE.token_capacity(TPM)
    return fullest_repeating_window([p + m for p, m in CALLS], limit) * (limit / (TPM / 6.0))


def main(users: Sequence[int], size_spread: float = 0.0) -> None:
    print(__doc__.split("\n\n")[0] if __doc__ else "")
    sizes = [p + m for p, m in CALLS]
    spread = f", each scaled by a factor in [{1 - size_spread:g}, {1 + size_spread:g}]"
    print(
        f"{TPM:,} TPM, Azure accounting, calls of {sizes} tokens"
        f"{spread if size_spread > 0 else ''}: share of the TPM (429s)"
    )
    print("users | fifo        | best-fit    | limiter     | repeat | ideal")
    # Both bounds are for the calls' own sizes: with a spread neither applies.
    bounds = f"{repeating():6.3f} | {ideal():5.3f}" if size_spread == 0 else "     - |     -"
    for count in users:
        cells = [
            central(count, best_fit=False, size_spread=size_spread),
            central(count, best_fit=True, size_spread=size_spread),
            limiter(count, size_spread=size_spread),
        ]
        row = " | ".join(f"{share:5.3f} ({refused:>3})" for share, refused in cells)
        print(f"{count:>5} | {row} | {bounds}", flush=True)


def run() -> None:
    parser = argparse.ArgumentParser(description="Admission policies side by side, simulated.")
    parser.add_argument("--users", type=int, action="append", help="users (repeatable)")
    parser.add_argument(
        "--size-spread",
        type=float,
        default=0.0,
        help="scale each call's prompt and max_tokens by a factor drawn from [1 - S, 1 + S]",
    )
    args = parser.parse_args()
    if not 0.0 <= args.size_spread < 1.0:
        parser.error(f"--size-spread must be in [0, 1), not {args.size_spread}")
    main(args.users or [3, 10, 50, 200], args.size_spread)


if __name__ == "__main__":
    run()
