"""The devhost broker as the pipeline's transport in a test, with the queues and the outcomes
topic devhost declares."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from devhost.broker import Broker
from devhost.outcomes import declare_outcomes
from shared.config import Settings


@contextmanager
def pipeline_broker(
    path: Path, settings: Settings, clock: Callable[[], float] = time.time
) -> Iterator[Broker]:
    """A broker on ``path`` and ``clock`` with every queue the pipeline sends to and the
    outcomes topic its final outcomes go to (as infra/ deploys it), duplicate detection on (the
    broker's default window, as on Service Bus), closed on exit."""
    with Broker(path, clock=clock) as broker:
        for queue in settings.queues.all():
            broker.ensure_queue(queue)
        declare_outcomes(broker)
        yield broker
