"""The wire protocol between the host driver and a board (docs/protocol.md), host side.

Frame (all integers little-endian)::

    0xA5 | type (1) | seq (2) | len (2) | payload (len) | crc (4)

``crc`` is CRC-32/ISO-HDLC (zlib's ``crc32``: polynomial 0x04C11DB7, reflected, initial and final
xor 0xFFFFFFFF) over ``type .. payload``. This module is the contract both ends read: the host driver
(``spikesmith.host``) and the gateware (``spikesmith.hw.board``) take their numbers from here.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

__all__ = ["SYNC", "HEADER", "CRC_BYTES", "FRAMING", "MAGIC", "VERSION", "MAX_PAYLOAD", "MAX_FRAME_PAYLOAD", "COMMIT_LAYER", "LOAD_HEAD",
           "MAX_LOAD_ROWS", "FrameType", "ErrorCode", "Frame",
           "crc32", "encode_frame", "FrameDecoder", "Identity", "code_bytes", "logit_bytes", "unpack_result"]

SYNC = 0xA5
HEADER = 6            # sync, type, seq, len
CRC_BYTES = 4         # the CRC-32 after the payload
FRAMING = HEADER + CRC_BYTES    # a frame's bytes besides its payload
MAGIC = b"SPKS"       # a spikesmith board
VERSION = 5             # 3: an IDENTIFY starts a session (docs/protocol.md, "Sessions"); 4: a LOAD carries rows;
                        # 5: CRC-32 (was CRC-16/CCITT-FALSE)
COMMIT_LAYER = 0xFF     # a LOAD for this layer commits the run-time weights
LOAD_HEAD = 4           # a LOAD's payload before its rows: layer (1), first row address (2), row count (1)
MAX_LOAD_ROWS = 255     # the count byte's limit; a board takes at most its identity's ``load_rows``
MAX_PAYLOAD = 4096    # no reply is longer; a longer reply header is noise
MAX_FRAME_PAYLOAD = 0xFFFF     # the length field's limit: the largest image a frame carries


class FrameType(enum.IntEnum):
    IDENTIFY = 0x01   # host -> board, empty
    INFER = 0x02      # host -> board, one image's input codes
    LOAD = 0x03       # host -> board, consecutive run-time weight rows, or the commit (layer 0xFF)
    IDENTITY = 0x81   # board -> host, the network and core parameters
    RESULT = 0x82     # board -> host, label and logits of the request with the same seq
    LOADED = 0x83     # board -> host, empty: the LOAD with the same seq is done
    ERROR = 0xEE      # board -> host, the request with this seq was refused


class ErrorCode(enum.IntEnum):
    CRC = 1           # the frame's CRC did not match: resend it
    LENGTH = 2        # the length does not fit the type (e.g. not one image)
    TYPE = 3          # unknown frame type
    BUSY = 4          # more requests in flight than the board's window (or a LOAD while images are)
    NOT_LOADED = 5    # an INFER before the run-time weights were loaded and committed


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC (``zlib.crc32``); ``crc32(b"123456789") == 0xCBF43926``."""
    return zlib.crc32(data)


def unpack_result(value: int, label_width: int, logit_width: int, classes: int) -> tuple[int, list[int]]:
    """A packed result -> ``(label, logits)``: the label in the ``label_width`` LSBs, then
    ``classes`` logits of ``logit_width`` bits each, two's complement.

    The one decoder of both result encodings: the core's result beat (``CorePlan.label_width``,
    ``CorePlan.logit_width``) and a RESULT payload read as a little-endian integer (16-bit
    label, ``8 * logit_bytes``-bit logits).
    """
    label = value & ((1 << label_width) - 1)
    value >>= label_width
    logits = []
    for _ in range(classes):
        field = value & ((1 << logit_width) - 1)
        logits.append(field - (1 << logit_width) if field >> (logit_width - 1) else field)
        value >>= logit_width
    return label, logits


def code_bytes(timesteps: int) -> int:
    """Bytes per input code on the wire."""
    return 1 if timesteps <= 8 else 2


def logit_bytes(logit_width: int) -> int:
    """Bytes per logit on the wire (two's complement, little-endian)."""
    return (logit_width + 7) // 8


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""


def encode_frame(frame_type: int, seq: int, payload: bytes = b"") -> bytes:
    """A frame; ``ValueError`` for a payload the 16-bit length field cannot carry."""
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"a frame carries at most {MAX_FRAME_PAYLOAD:,} payload bytes, not {len(payload):,}")
    body = struct.pack("<BHH", frame_type, seq & 0xFFFF, len(payload)) + payload
    return bytes([SYNC]) + body + struct.pack("<I", crc32(body))


class FrameDecoder:
    """Turns received bytes into frames; skips noise and resynchronises on the next 0xA5.

    Bounding ``max_payload`` to the longest frame the peer can send, ``types`` to the frame
    types it can send, and ``lengths`` (``{type: (shortest, longest)}`` payload bytes, which
    also limits the types) to what each type can be, keeps a damaged header from swallowing
    the frames after it: a header outside them is dropped at once.

    ``feed`` returns the frames completed by the new bytes. A frame whose CRC fails is
    dropped (counted in ``bad_frames``) and the search restarts one byte after its sync, so
    a sync byte inside a damaged frame's payload is not lost.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, types: tuple[int, ...] | None = None,
                 lengths: dict[int, tuple[int, int]] | None = None):
        self.buffer = bytearray()
        self.max_payload = max_payload    # a longer length field is damage: resync at once
        self.types = types                # other frame types are damage too (None: any)
        self.lengths = lengths            # per type, the payload lengths it can have (None: any)
        self.bad_frames = 0
        self.skipped_bytes = 0

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(SYNC)
            if start < 0:
                self.skipped_bytes += len(self.buffer)
                self.buffer.clear()
                return frames
            if start:
                self.skipped_bytes += start
                del self.buffer[:start]
            if len(self.buffer) < HEADER:
                return frames
            frame_type, seq, length = struct.unpack_from("<BHH", self.buffer, 1)
            if not self._plausible(frame_type, length):
                self._resync()
                continue
            end = FRAMING + length
            if len(self.buffer) < end:
                return frames
            body = bytes(self.buffer[1:HEADER + length])
            (crc,) = struct.unpack_from("<I", self.buffer, HEADER + length)
            if crc != crc32(body):
                self._resync()
                continue
            frames.append(Frame(frame_type, seq, body[5:]))
            del self.buffer[:end]

    def _plausible(self, frame_type: int, length: int) -> bool:
        if length > self.max_payload or (self.types is not None and frame_type not in self.types):
            return False
        if self.lengths is None:
            return True
        shortest, longest = self.lengths.get(frame_type, (1, 0))
        return shortest <= length <= longest

    def _resync(self) -> None:
        self.bad_frames += 1
        self.skipped_bytes += 1
        del self.buffer[:1]


@dataclass(frozen=True)
class Identity:
    """What a board says about itself (an IDENTITY payload).

    ``lanes`` and ``loaded`` (per layer) let the host rebuild the packed rows of the layers
    whose weights the board takes at run time (LOAD); ``load_bytes`` is a row's size in a LOAD,
    ``load_rows`` the most rows one LOAD carries (the board's LOAD buffer).
    """
    timesteps: int
    inputs: int
    classes: int
    logit_bytes: int            # bytes per logit in a RESULT
    window: int                 # requests the board takes in flight
    clock_hz: int
    initiation_interval: int    # worst-case core cycles per image
    fingerprint: bytes          # SHA-256 of the network (gen/netfile.py)
    lanes: tuple[int, ...] = ()
    loaded: tuple[bool, ...] = ()
    load_bytes: int = 0
    load_rows: int = 0

    FORMAT = "<4sBBBBHHBBII32sBB"          # then per layer: lanes (H), loaded (B)
    LAYER_FORMAT = "<HB"
    MIN_SIZE = struct.calcsize(FORMAT)
    MAX_SIZE = struct.calcsize(FORMAT) + 255 * struct.calcsize(LAYER_FORMAT)

    def encode(self) -> bytes:
        head = struct.pack(self.FORMAT, MAGIC, VERSION, self.timesteps, code_bytes(self.timesteps),
                           self.logit_bytes, self.inputs, self.classes, self.window, self.load_rows,
                           self.clock_hz, self.initiation_interval, self.fingerprint, len(self.lanes),
                           self.load_bytes)
        return head + b"".join(struct.pack(self.LAYER_FORMAT, lanes, loaded)
                               for lanes, loaded in zip(self.lanes, self.loaded))

    @classmethod
    def decode(cls, payload: bytes) -> "Identity":
        head = struct.calcsize(cls.FORMAT)
        if len(payload) >= 5 and payload[:4] != MAGIC:
            raise ValueError(f"not a spikesmith board (it says {payload[:4]!r}, not {MAGIC!r})")
        if len(payload) >= 5 and payload[4] != VERSION:
            raise ValueError(f"the board speaks protocol version {payload[4]}, this host version {VERSION} "
                             "(rebuild the bitstream with this spikesmith)")
        if len(payload) < head:
            raise ValueError(f"an identity is at least {head} bytes, not {len(payload)}")
        (_, _, timesteps, _, logit_nbytes, inputs, classes, window, load_rows, clock_hz, interval,
         fingerprint, layers, load_bytes) = struct.unpack(cls.FORMAT, payload[:head])
        size = struct.calcsize(cls.LAYER_FORMAT)
        if len(payload) != head + layers * size:
            raise ValueError(f"an identity of {layers} layers is {head + layers * size} bytes, not {len(payload)}")
        per_layer = [struct.unpack(cls.LAYER_FORMAT, payload[head + i * size:head + (i + 1) * size])
                     for i in range(layers)]
        if not 1 <= timesteps <= 16 or inputs * code_bytes(timesteps) > MAX_FRAME_PAYLOAD or not classes \
                or not window:
            raise ValueError(f"T={timesteps}, {inputs} inputs, {classes} classes, window {window} is no board "
                             "this host can drive")
        if load_bytes and not load_rows:
            raise ValueError(f"the board takes {load_bytes}-byte weight rows but no rows per LOAD")
        return cls(timesteps, inputs, classes, logit_nbytes, window, clock_hz, interval, fingerprint,
                   tuple(lanes for lanes, _ in per_layer), tuple(bool(flag) for _, flag in per_layer), load_bytes,
                   load_rows)

    def encode_load(self, layer: int, address: int, rows=()) -> bytes:
        """A LOAD payload: layer, first row address (LE), row count, then the packed ``rows`` (for
        addresses ``address``, ``address + 1``, ...), ``load_bytes`` bytes each (LE). No rows: the commit."""
        rows = list(rows)
        if len(rows) > MAX_LOAD_ROWS:
            raise ValueError(f"a LOAD carries at most {MAX_LOAD_ROWS} rows, not {len(rows)}")
        return (bytes([layer]) + address.to_bytes(2, "little") + bytes([len(rows)])
                + b"".join(int(row).to_bytes(self.load_bytes, "little") for row in rows))

    @property
    def fingerprint_text(self) -> str:
        return "sha256:" + self.fingerprint.hex()

    def encode_image(self, codes) -> bytes:
        """An INFER payload: the image's input codes, ``code_bytes`` each, little-endian."""
        width = code_bytes(self.timesteps)
        return b"".join(int(c).to_bytes(width, "little") for c in codes)

    @property
    def result_bytes(self) -> int:
        """Length of a RESULT payload."""
        return 2 + self.classes * self.logit_bytes

    def decode_result(self, payload: bytes) -> tuple[int, list[int]]:
        """A RESULT payload -> (label, logits); a ValueError for a payload no board sends.

        The core's label is the first largest logit, so a payload whose label is not that
        one is damage that the frame's CRC-32 let through (about one damaged frame in 2**32,
        of the damage it does not always catch): the driver drops it and asks again.
        """
        if len(payload) != self.result_bytes:
            raise ValueError(f"a result is {self.result_bytes} bytes, not {len(payload)}")
        label, logits = unpack_result(int.from_bytes(payload, "little"), 16, 8 * self.logit_bytes, self.classes)
        if label != max(range(len(logits)), key=lambda k: (logits[k], -k)):
            raise ValueError(f"label {label} is not the first largest of the logits {logits}")
        return label, logits
