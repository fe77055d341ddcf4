"""Outgoing AMQP frames with every performative field spelled out.

AMQP 1.0 lets an encoder leave out trailing fields of a performative that are null (Proton
does), and a decoder must treat them as null. The AMQP client inside ``azure-eventhub`` (5.15)
reads performatives by position and fails on such frames. :class:`FramePadder` sits between
Proton's transport and the socket and appends the missing trailing fields as explicit nulls,
which every conforming decoder reads the same way. It rewrites nothing else: protocol headers,
empty (heartbeat) frames and payload bytes pass through unchanged.
"""

from __future__ import annotations

import struct
from typing import Final

# Field count of each performative by descriptor code (AMQP 1.0 parts 2.7 and 5.3).
FIELDS: Final = {
    0x10: 10,  # open
    0x11: 8,  # begin
    0x12: 14,  # attach
    0x13: 11,  # flow
    0x14: 11,  # transfer
    0x15: 6,  # disposition
    0x16: 3,  # detach
    0x17: 1,  # end
    0x18: 1,  # close
    0x40: 1,  # sasl-mechanisms
    0x41: 3,  # sasl-init
    0x42: 1,  # sasl-challenge
    0x43: 1,  # sasl-response
    0x44: 2,  # sasl-outcome
}
_NULL: Final = 0x40
_LIST0: Final = 0x45
_LIST8: Final = 0xC0
_LIST32: Final = 0xD0
_HEADER_SIZE: Final = 8


class FrameError(ValueError):
    """The outgoing byte stream is not a sequence of AMQP frames."""


class FramePadder:
    """Feed it the transport's output in any chunks; it returns the same frames, padded."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while True:
            if len(self._buffer) >= 4 and self._buffer[:4] == b"AMQP":
                if len(self._buffer) < _HEADER_SIZE:
                    break
                out += self._buffer[:_HEADER_SIZE]
                del self._buffer[:_HEADER_SIZE]
                continue
            if len(self._buffer) < 4:
                break
            (size,) = struct.unpack_from(">I", self._buffer)
            if size < _HEADER_SIZE:
                raise FrameError(f"frame size {size} is below the minimum of 8")
            if len(self._buffer) < size:
                break
            frame = bytes(self._buffer[:size])
            del self._buffer[:size]
            out += pad_frame(frame)
        return bytes(out)


def pad_frame(frame: bytes) -> bytes:
    """One complete frame, with its performative's missing trailing fields added as nulls."""
    doff = frame[4] * 4
    body = frame[doff:]
    if len(body) < 4 or body[0] != 0x00 or body[1] != 0x53:
        return frame  # an empty (heartbeat) frame, or a descriptor this layer does not know
    code = body[2]
    wanted = FIELDS.get(code)
    if wanted is None:
        return frame
    constructor = body[3]
    if constructor == _LIST0:
        count, fields, rest = 0, b"", body[4:]
    elif constructor == _LIST8:
        if len(body) < 6:
            raise FrameError("truncated list8 performative")
        list_size, count = body[4], body[5]
        fields = body[6 : 5 + list_size]
        rest = body[5 + list_size :]
    elif constructor == _LIST32:
        if len(body) < 12:
            raise FrameError("truncated list32 performative")
        list_size, count = struct.unpack_from(">II", body, 4)
        fields = body[12 : 8 + list_size]
        rest = body[8 + list_size :]
    else:
        raise FrameError(f"performative 0x{code:02x} is not a list (0x{constructor:02x})")
    if count >= wanted:
        return frame
    fields = fields + bytes([_NULL]) * (wanted - count)
    if len(fields) + 1 <= 0xFF:
        encoded = bytes([_LIST8, len(fields) + 1, wanted]) + fields
    else:
        encoded = bytes([_LIST32]) + struct.pack(">II", len(fields) + 4, wanted) + fields
    new_body = body[:3] + encoded + rest
    header = frame[:doff]
    return struct.pack(">I", len(header) + len(new_body)) + header[4:] + new_body
