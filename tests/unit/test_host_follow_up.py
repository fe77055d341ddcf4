"""The scaler looks again soon after a step that started instances: the rest of a burst that is
still arriving must not wait a whole polling interval for the instances it needs."""

from __future__ import annotations

from pathlib import Path

from devhost.environment import Workdir
from devhost.host import FOLLOW_UP_S, Host
from devhost.scaler import ScaleLimits


class _Steps(Host):
    """A host whose steps are scripted: each returns how many instances it started."""

    def __init__(self, root: Path, started: list[int]) -> None:
        super().__init__(Workdir(root), simulator=None, limits=ScaleLimits(polling_interval_s=1.0))
        self.script = list(started)
        self.waits: list[float] = []

    async def scale_once(self) -> int:
        started = self.script.pop(0)
        if not self.script:
            self._stop.set()
        return started

    async def _wait_for_work(self, timeout_s: float) -> None:
        self.waits.append(timeout_s)


async def test_after_a_step_that_started_instances_the_next_comes_sooner(tmp_path: Path) -> None:
    host = _Steps(tmp_path, started=[1, 2, 0, 0, 3, 0])
    await host._scale_loop()
    assert host.waits == [FOLLOW_UP_S, FOLLOW_UP_S, 1.0, 1.0, FOLLOW_UP_S, 1.0]


async def test_the_follow_up_never_lengthens_a_short_polling_interval(tmp_path: Path) -> None:
    host = _Steps(tmp_path, started=[1, 0])
    host.limits = ScaleLimits(polling_interval_s=FOLLOW_UP_S / 2)
    await host._scale_loop()
    assert host.waits == [FOLLOW_UP_S / 2, FOLLOW_UP_S / 2]
