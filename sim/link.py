"""A lossy serial link for soak tests: seeded drop, duplication, corruption and delay of bytes.

:class:`LossyLink` wraps any pyserial-like port (``write``, ``read``, ``in_waiting``,
``close``): a real port, the simulated board's socket, or a board model. Each byte, in
either direction, is dropped, duplicated or has one bit flipped with the given
probabilities; ``delay`` holds received bytes back for up to that many seconds. The driver
sees the damaged stream exactly as it would from a noisy cable.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["LossyLink"]


class LossyLink:
    def __init__(self, port, *, seed: int = 0, drop: float = 0.0, duplicate: float = 0.0, corrupt: float = 0.0,
                 delay: float = 0.0):
        self.port = port
        self.rng = np.random.default_rng(seed)
        self.drop, self.duplicate, self.corrupt, self.delay = drop, duplicate, corrupt, delay
        self.pending: list[tuple[float, bytes]] = []     # received, damaged, released at a time
        self.damaged = {"dropped": 0, "duplicated": 0, "corrupted": 0}

    def _damage(self, data: bytes) -> bytes:
        out = bytearray()
        draws = self.rng.random((len(data), 3))
        for byte, (drop, duplicate, corrupt) in zip(data, draws):
            if drop < self.drop:
                self.damaged["dropped"] += 1
                continue
            if corrupt < self.corrupt:
                self.damaged["corrupted"] += 1
                byte ^= 1 << int(self.rng.integers(0, 8))
            out.append(byte)
            if duplicate < self.duplicate:
                self.damaged["duplicated"] += 1
                out.append(byte)
        return bytes(out)

    def write(self, data: bytes) -> int:
        self.port.write(self._damage(bytes(data)))
        return len(data)

    def _pull(self) -> None:
        data = self.port.read(max(1, getattr(self.port, "in_waiting", 0)))
        if data:
            hold = self.delay * float(self.rng.random()) if self.delay else 0.0
            self.pending.append((time.monotonic() + hold, self._damage(data)))

    @property
    def in_waiting(self) -> int:
        self._pull()
        now = time.monotonic()
        return sum(len(b) for t, b in self.pending if t <= now)

    def read(self, size: int = 1) -> bytes:
        self._pull()
        now, out = time.monotonic(), bytearray()
        while self.pending and self.pending[0][0] <= now and len(out) < size:     # in order: a cable reorders nothing
            _, chunk = self.pending.pop(0)
            out += chunk
        if len(out) > size:
            self.pending.insert(0, (now, bytes(out[size:])))
            del out[size:]
        return bytes(out)

    def close(self) -> None:
        self.port.close()
