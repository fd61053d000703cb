"""A spikesmith board in Python behind a pyserial-like port, with fault injection (for driver tests).

It speaks docs/protocol.md and answers with the golden model, so a test can tell a driver
bug from a board bug. Faults: corrupted or dropped bytes either way, reply delays, partial
reads, replies for sequence numbers nobody asked about, duplicated replies, a reset that
forgets everything in flight, and silence.
"""

from __future__ import annotations

import time

import numpy as np

from spikesmith.contract.bounds import network_bounds
from spikesmith.gen.netfile import fingerprint
from spikesmith.contract.protocol import (ErrorCode, FrameDecoder, FrameType, Identity, code_bytes, encode_frame,
                                      logit_bytes)
from spikesmith.sim import golden


def identity_of(net, window: int = 4) -> Identity:
    logit_width = network_bounds(net)[-1].logit_width
    return Identity(net.timesteps, net.input.size, net.classes, logit_bytes(logit_width), window, 12_000_000, 1000,
                    bytes.fromhex(fingerprint(net).split(":")[1]))


class FakeBoard:
    def __init__(self, net, *, seed: int = 0, window: int = 4, corrupt_in: float = 0.0, corrupt_out: float = 0.0,
                 drop_in: float = 0.0, drop_out: float = 0.0, delay: float = 0.0, max_chunk: int | None = None,
                 unknown_replies: float = 0.0, duplicate_replies: float = 0.0, reset_after: int | None = None,
                 silent: bool = False):
        self.net, self.identity = net, identity_of(net, window)
        self.rng = np.random.default_rng(seed)
        self.corrupt_in, self.corrupt_out, self.drop_in, self.drop_out = corrupt_in, corrupt_out, drop_in, drop_out
        self.delay, self.max_chunk = delay, max_chunk
        self.unknown_replies, self.duplicate_replies = unknown_replies, duplicate_replies
        self.reset_after, self.silent = reset_after, silent
        self.decoder = self._decoder()
        self.outgoing: list[tuple[float, bytes]] = []   # (release time, bytes)
        self.requests = 0
        self.closed = False

    # ---------------------------------------------------------------- the port side

    def write(self, data: bytes) -> int:
        data = self._damage(bytes(data), self.corrupt_in, self.drop_in)
        for frame in self.decoder.feed(data):
            self._serve(frame)
        return len(data)

    @property
    def in_waiting(self) -> int:
        now = time.monotonic()
        return sum(len(b) for t, b in self.outgoing if t <= now)

    def read(self, size: int = 1) -> bytes:
        now = time.monotonic()
        ready = b"".join(b for t, b in self.outgoing if t <= now)
        self.outgoing = [(t, b) for t, b in self.outgoing if t > now]
        if self.max_chunk:
            size = min(size, int(self.rng.integers(1, self.max_chunk + 1)))
        taken, rest = ready[:size], ready[size:]
        if rest:
            self.outgoing.insert(0, (now, rest))
        return taken

    def close(self) -> None:
        self.closed = True

    # ---------------------------------------------------------------- the board side

    def _decoder(self) -> FrameDecoder:
        return FrameDecoder(self.net.input.size * code_bytes(self.net.timesteps))

    def _damage(self, data: bytes, corrupt: float, drop: float) -> bytes:
        out = bytearray()
        for byte in data:
            if self.rng.random() < drop:
                continue
            if self.rng.random() < corrupt:
                byte ^= 1 << int(self.rng.integers(0, 8))
            out.append(byte)
        return bytes(out)

    def _reply(self, frame: bytes) -> None:
        if self.silent:
            return
        frame = self._damage(frame, self.corrupt_out, self.drop_out)
        self.outgoing.append((time.monotonic() + self.delay * float(self.rng.random()), frame))

    def _serve(self, frame) -> None:
        if frame.type == FrameType.IDENTIFY:
            # A new session (docs/protocol.md): results still inside the board are dropped.
            now = time.monotonic()
            self.outgoing = [(t, b) for t, b in self.outgoing if t <= now or b[1:2] != bytes([FrameType.RESULT])]
            self._reply(encode_frame(FrameType.IDENTITY, frame.seq, self.identity.encode()))
            return
        if frame.type != FrameType.INFER:
            self._reply(encode_frame(FrameType.ERROR, frame.seq, bytes([ErrorCode.TYPE])))
            return
        width = code_bytes(self.net.timesteps)
        if len(frame.payload) != self.net.input.size * width:
            self._reply(encode_frame(FrameType.ERROR, frame.seq, bytes([ErrorCode.LENGTH])))
            return
        self.requests += 1
        if self.reset_after is not None and self.requests == self.reset_after:
            self.outgoing.clear()            # the board restarts: replies in flight are gone
            self.decoder = self._decoder()
            return
        codes = np.frombuffer(frame.payload, dtype="<u1" if width == 1 else "<u2").astype(np.int64)
        result = golden.run(self.net, codes[None, :])
        n = self.identity.logit_bytes
        payload = int(result.predictions[0]).to_bytes(2, "little") + b"".join(
            int(v).to_bytes(n, "little", signed=True) for v in result.logits[0])
        if self.rng.random() < self.unknown_replies:
            self._reply(encode_frame(FrameType.RESULT, (frame.seq + 1000) & 0xFFFF, payload))
        self._reply(encode_frame(FrameType.RESULT, frame.seq, payload))
        if self.rng.random() < self.duplicate_replies:
            self._reply(encode_frame(FrameType.RESULT, frame.seq, payload))
