"""A spikesmith board in Python behind a pyserial-like port, with fault injection (for driver tests).

It speaks docs/protocol.md and answers with the golden model, so a test can tell a driver
bug from a board bug. Given a core plan with run-time weights it takes LOADs as the board top
does (``rows``: what was written where, ``loads``: the row counts of the LOADs taken). Faults: corrupted or dropped bytes either way, reply delays, partial
reads, replies for sequence numbers nobody asked about, duplicated replies, a reset that
forgets everything in flight, and silence.
"""

from __future__ import annotations

import time

import numpy as np

from spikesmith.contract.bounds import network_bounds
from spikesmith.gen.netfile import fingerprint
from spikesmith.contract.protocol import (COMMIT_LAYER, LOAD_HEAD, ErrorCode, FrameDecoder, FrameType, Identity,
                                         code_bytes, encode_frame, logit_bytes)
from spikesmith.gen.board import load_rows
from spikesmith.sim import golden


def identity_of(net, window: int = 4, plan=None) -> Identity:
    """The identity of a board running ``net``; with a ``plan``, its lanes and run-time weights too."""
    logit_width = network_bounds(net)[-1].logit_width
    layers = {} if plan is None else {
        "lanes": tuple(layer.lanes for layer in plan.layers), "loaded": tuple(layer.weights_loaded for layer in plan.layers),
        "load_bytes": plan.load_bytes, "load_rows": load_rows(plan.load_bytes)}
    return Identity(net.timesteps, net.input.size, net.classes, logit_bytes(logit_width), window, 12_000_000, 1000,
                    bytes.fromhex(fingerprint(net).split(":")[1]), **layers)


class FakeBoard:
    def __init__(self, net, *, seed: int = 0, window: int = 4, corrupt_in: float = 0.0, corrupt_out: float = 0.0,
                 drop_in: float = 0.0, drop_out: float = 0.0, delay: float = 0.0, max_chunk: int | None = None,
                 unknown_replies: float = 0.0, duplicate_replies: float = 0.0, reset_after: int | None = None,
                 silent: bool = False, plan=None):
        self.net, self.identity = net, identity_of(net, window, plan)
        self.rows: dict[tuple[int, int], int] = {}      # (layer, address) -> the row last written there
        self.loads: list[int] = []                      # row count of every LOAD taken
        self.committed = not any(self.identity.loaded)
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
        image = self.net.input.size * code_bytes(self.net.timesteps)
        return FrameDecoder(max(image, LOAD_HEAD + self.identity.load_rows * self.identity.load_bytes))

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
        if frame.type == FrameType.LOAD and self.identity.load_bytes:
            self._load(frame)
            return
        if frame.type != FrameType.INFER:
            self._reply(encode_frame(FrameType.ERROR, frame.seq, bytes([ErrorCode.TYPE])))
            return
        if not self.committed:
            self._reply(encode_frame(FrameType.ERROR, frame.seq, bytes([ErrorCode.NOT_LOADED])))
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

    def _load(self, frame) -> None:
        """A LOAD (docs/protocol.md): the length exact for its row count, a known layer, then LOADED."""
        payload, size = frame.payload, self.identity.load_bytes
        layer, address, count = payload[0], int.from_bytes(payload[1:3], "little"), payload[3] if len(payload) > 3 else 0
        commit = layer == COMMIT_LAYER
        rows_fit = count == 0 if commit else 1 <= count <= self.identity.load_rows
        known = commit or (layer < len(self.identity.loaded) and self.identity.loaded[layer])
        if len(payload) < LOAD_HEAD or not rows_fit or len(payload) != LOAD_HEAD + count * size or not known:
            self._reply(encode_frame(FrameType.ERROR, frame.seq, bytes([ErrorCode.LENGTH])))
            return
        for k in range(count):
            row = payload[LOAD_HEAD + k * size:LOAD_HEAD + (k + 1) * size]
            self.rows[layer, address + k] = int.from_bytes(row, "little")
        self.committed = commit
        if not commit:
            self.loads.append(count)
        self._reply(encode_frame(FrameType.LOADED, frame.seq))
