"""``devhost escalations`` and ``devhost outbox`` on a workdir: the team's side, by command."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import pytest

from devhost import desk
from devhost.broker.publisher import BrokerPublisher
from devhost.environment import Workdir, app_settings
from shared import bootstrap
from shared.bootstrap import load_settings
from tests.support.broker import pipeline_broker
from tests.support.clock import FakeClock
from tests.support.drive import app_functions, hub_event
from tests.support.fakes import ESCALATION, INTENT_ANGRY, ScriptedModel
from tests.support.stage_runner import run_stages


def _escalated_workdir(root: Path) -> None:
    """A workdir whose store holds one escalated conversation."""
    workdir = Workdir(root)
    settings = load_settings(app_settings(workdir, simulator_url="http://127.0.0.1:1"))
    model = ScriptedModel(answers={"intent": [INTENT_ANGRY], "escalation": [ESCALATION]})

    async def run() -> None:
        with pipeline_broker(workdir.broker, settings, FakeClock(start=time.time())) as broker:
            bootstrap.configure(settings=settings, publisher=BrokerPublisher(broker), llm=model)
            body = json.dumps({"customerId": "c-9", "text": "a person!", "channel": "web"})
            await app_functions()["ingest"]([hub_event(body.encode())])
            await run_stages(broker, FakeClock(), settings)
            await bootstrap.shutdown()

    asyncio.run(run())
    bootstrap.configure()


def _cli(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The commands as ``python -m devhost`` parses and runs them."""
    parser = argparse.ArgumentParser()
    desk.add_commands(parser.add_subparsers(dest="command", required=True))
    code = desk.dispatch(Workdir(root), parser.parse_args(args))
    assert code is not None
    return code, capsys.readouterr().out


def test_a_person_claims_and_resolves_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _escalated_workdir(tmp_path)
    code, listing = _cli(tmp_path, capsys, "escalations", "list")
    assert code == 0
    assert "billing" in listing
    assert "high" in listing
    work_item = next(word for word in listing.split() if word.startswith("w-"))
    code, out = _cli(tmp_path, capsys, "escalations", "claim", work_item, "--agent", "alice")
    assert (code, out.strip()) == (0, f"{work_item}: claimed (alice)")
    code, out = _cli(tmp_path, capsys, "escalations", "claim", work_item, "--agent", "bob")
    assert code == 1
    assert "claimed by alice" in out
    code, out = _cli(
        tmp_path,
        capsys,
        "escalations",
        "resolve",
        work_item,
        "--agent",
        "alice",
        "--reply",
        "Refunded, sorry for the wait.",
    )
    assert code == 0
    code, out = _cli(tmp_path, capsys, "outbox", "--subscription", "delivery-web")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert "handover" in lines[0]
    assert "billing (high)" in lines[0]
    assert "reply" in lines[1]
    assert "human:alice: Refunded, sorry for the wait." in lines[1]
    code, out = _cli(tmp_path, capsys, "escalations", "list", "--status", "resolved")
    assert work_item in out
    code, out = _cli(tmp_path, capsys, "outbox", "--subscription", "nope")
    assert code == 2
