"""Every read command documents ``--json`` and its keys in its ``--help``."""

from __future__ import annotations

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
