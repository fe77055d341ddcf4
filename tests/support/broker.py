"""The devhost broker as the pipeline's transport in a test, with the queues and the outcomes
topic devhost declares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devhost.broker import Broker
from devhost.outcomes import declare_outcomes
from shared.config import Settings


@contextmanager
def pipeline_broker(path: Path, settings: Settings) -> Iterator[Broker]:
    """A broker on ``path`` with every queue the pipeline sends to and the outcomes topic its
    final outcomes go to, duplicate detection on (the broker's default window, as on Service
    Bus), closed on exit."""
    with Broker(path) as broker:
        for queue in settings.queues.all():
            broker.ensure_queue(queue)
        declare_outcomes(broker)
        yield broker
