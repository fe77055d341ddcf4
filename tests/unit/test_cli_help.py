"""Every read command documents ``--json`` and its keys in its ``--help``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devhost import cli, readouts

READ_COMMANDS = [
    (["status"], (*readouts.STATUS_KEYS, *readouts.ENTITY_KEYS)),
    (["dashboard"], ("url",)),
    (["conversations"], readouts.CONVERSATION_KEYS),
    (["rejections"], readouts.REJECTION_KEYS),
    (["batches"], readouts.BATCH_KEYS),
    (["show"], ()),
    (["dlq", "list"], readouts.DEAD_LETTER_KEYS),
    (["escalations", "list"], (*readouts.WORK_ITEM_KEYS, "total")),
    (["escalations", "show"], ("workItem", "audit")),
    (["outbox"], readouts.OUTBOX_KEYS),
    (["doctor"], (*readouts.DOCTOR_KEYS, *readouts.FILE_KEYS)),
]


@pytest.mark.parametrize(("command", "keys"), READ_COMMANDS)
def test_the_help_of_a_read_command_lists_its_json_keys(
    command: list[str], keys: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--json" in text
    for key in keys:
        assert key in text, key


def test_the_status_help_explains_every_column(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["status", "--help"])
    text = capsys.readouterr().out
    for column in ("backlog", "scheduled", "in flight", "dead-lettered", "bound by", "quota cap"):
        assert column in text


def test_doctor_json_names_a_damaged_file_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "store.sqlite3").write_bytes(b"this is not a database, " * 200)

    code = cli.main(["--workdir", str(tmp_path), "doctor", "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["problems"] == 1
    states = {Path(f["path"]).name: f["state"] for f in report["files"]}
    assert states["store.sqlite3"] == "damaged"
    assert states["broker.sqlite3"] == "absent"
    (damaged,) = [f for f in report["files"] if f["state"] == "damaged"]
    assert damaged["problems"]
    assert report["writable"] is True
