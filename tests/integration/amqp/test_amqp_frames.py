"""The frame layer: performatives leave the server with every field present."""

from __future__ import annotations

import struct

from proton import Data

from devhost.amqp.frames import FramePadder, pad_frame


def _frame(code: int, fields: list[object], payload: bytes = b"") -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(code)
    data.put_list()
    data.enter()
    for value in fields:
        data.put_object(value)
    data.exit()
    data.exit()
    body = bytes(data.encode()) + payload
    return struct.pack(">IBBH", 8 + len(body), 2, 0, 0) + body


def _fields(frame: bytes) -> tuple[int, list[object], bytes]:
    data = Data()
    used = data.decode(frame[8:])
    data.rewind()
    data.next()
    described = data.get_object()
    return int(described.descriptor), list(described.value), frame[8 + used :]


def test_missing_trailing_fields_become_explicit_nulls_and_payload_is_kept() -> None:
    """AMQP 1.0 part 1.4: a list may omit trailing nulls; the padded frame spells them out
    and decodes to the same values (a transfer keeps its payload after the performative)."""
    transfer = _frame(0x14, [0, 7], payload=b"\x00Su\xa0\x03abc")
    code, fields, payload = _fields(pad_frame(transfer))
    assert (code, fields[:2], len(fields)) == (0x14, [0, 7], 11)
    assert fields[2:] == [None] * 9
    assert payload == b"\x00Su\xa0\x03abc"
    close = struct.pack(">IBBH", 12, 2, 0, 0) + b"\x00\x53\x18\x45"  # close, list0
    assert _fields(pad_frame(close))[:2] == (0x18, [None])
    full = _frame(0x16, [1, True, None])
    assert pad_frame(full) == full


def test_the_padder_reassembles_frames_split_across_writes() -> None:
    stream = b"AMQP\x00\x01\x00\x00" + _frame(0x17, []) + struct.pack(">IBBH", 8, 2, 0, 0)
    padder = FramePadder()
    out = b"".join(padder.feed(stream[i : i + 3]) for i in range(0, len(stream), 3))
    assert out.startswith(b"AMQP\x00\x01\x00\x00")
    assert _fields(out[8:])[:2] == (0x17, [None])
    assert out.endswith(struct.pack(">IBBH", 8, 2, 0, 0))  # a heartbeat passes unchanged
