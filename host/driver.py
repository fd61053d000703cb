"""The host driver: streams images to a board (real or simulated) and returns its results in order.

    with Accelerator.open("/dev/ttyUSB1", baudrate=115200) as board:   # or "socket://127.0.0.1:PORT"
        board.expect(net)                                # refuses a board running another network
        board.load_weights(plan)                         # only a board that keeps weights in SPRAM
        for result in board.infer(codes):                # codes: (N, inputs) int input codes
            print(result.index, result.label, result.logits)

The port is any pyserial-like object (``write``, ``read``, ``in_waiting``, ``close``): what
``serial.serial_for_url`` opens for ``/dev/tty*``, ``socket://`` and ``loop://`` URLs. The
driver keeps at most ``window`` images in flight, resends an image whose reply is missing,
damaged or refused, ignores replies it did not ask for, and gives up with a clear error after
``retries`` resends of one request (:data:`DEFAULT_RETRIES`). Frames: docs/protocol.md.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..contract.network import fingerprint
from ..contract.plan import CorePlan
from ..contract.protocol import COMMIT_LAYER, ErrorCode, FrameDecoder, FrameType, Identity, encode_frame
from ..errors import SpikesmithError

__all__ = ["Accelerator", "InferenceResult", "DriverStats", "BoardError", "BoardTimeout", "WrongNetworkError",
           "load_payloads", "DEFAULT_RETRIES"]

#: Resends of one request before the driver gives up. At 1 % byte damage each way (bench/link.py) a
#: request and its reply are lost about 4 times in 10, and independently enough: of 12,000 images
#: 15 needed 8 sends or more and none more than 10; with 4 retries every run of 400 images failed.
#: A board that never answers is given up after (retries + 1) x timeout.
DEFAULT_RETRIES = 20


class BoardError(SpikesmithError):
    """The board cannot be used: it does not answer, or not as a spikesmith board."""


class BoardTimeout(BoardError):
    """An image got no valid reply after every retry."""


class WrongNetworkError(BoardError):
    """The board runs a different network than the one given."""


@dataclass(frozen=True)
class InferenceResult:
    index: int              # position of the image in the stream
    label: int
    logits: list[int]
    latency: float          # seconds from the (last) send to the reply


@dataclass
class DriverStats:
    images: int = 0
    seconds: float = 0.0
    resent: int = 0             # images sent again (timeout, damaged or refused)
    most_sends: int = 0         # the most times one image was sent before its result came
    unexpected_replies: int = 0  # replies for no image in flight (late duplicates, noise)
    board_errors: dict = field(default_factory=dict)   # ErrorCode name -> count
    latencies: list = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        lat = np.array(self.latencies) if self.latencies else np.zeros(1)
        return {"images": self.images, "seconds": self.seconds, "images_per_second": self.images_per_second,
                "resent": self.resent, "most_sends": self.most_sends, "unexpected_replies": self.unexpected_replies,
                "board_errors": dict(self.board_errors),
                "latency_ms": {"mean": 1e3 * float(lat.mean()), "p50": 1e3 * float(np.percentile(lat, 50)),
                               "p99": 1e3 * float(np.percentile(lat, 99))}}


@dataclass
class _InFlight:
    index: int
    frame: bytes
    sent: float
    attempts: int = 1


def load_payloads(identity: Identity, loads) -> list[tuple[bytes, int]]:
    """LOAD payloads for ``(layer, address, row)`` weight rows (docs/protocol.md, LOAD), each with its
    row count: runs of consecutive addresses of one layer, at most ``identity.load_rows`` rows each."""
    payloads: list[tuple[bytes, int]] = []
    run: list[int] = []
    layer = start = 0
    for row_layer, address, row in loads:
        if run and (row_layer != layer or address != start + len(run) or len(run) == identity.load_rows):
            payloads.append((identity.encode_load(layer, start, run), len(run)))
            run = []
        if not run:
            layer, start = row_layer, address
        run.append(row)
    if run:
        payloads.append((identity.encode_load(layer, start, run), len(run)))
    return payloads


class Accelerator:
    """One board behind one port. ``timeout``: seconds to wait for a reply before resending."""

    def __init__(self, port, *, timeout: float = 2.0, retries: int = DEFAULT_RETRIES, window: int | None = None,
                 poll: float = 0.002):
        self.port = port
        self.timeout, self.retries, self.poll = timeout, retries, poll
        self.requested_window = window
        self.decoder = FrameDecoder(Identity.MAX_SIZE, lengths=self._identifying_lengths())
        self.identity: Identity | None = None
        self.stats = DriverStats()
        # A random start: a late reply to an earlier session's request rarely carries a seq we use (and
        # the board drops results of requests it took before our IDENTIFY: docs/protocol.md, "Sessions").
        self._seq = secrets.randbelow(1 << 16)

    @staticmethod
    def _identifying_lengths() -> dict[int, tuple[int, int]]:
        """Replies worth reading before the identity: the identity itself, errors."""
        return {FrameType.IDENTITY: (Identity.MIN_SIZE, Identity.MAX_SIZE), FrameType.ERROR: (1, 1)}

    def _running_lengths(self) -> dict[int, tuple[int, int]]:
        """Once identified, each reply's length is known exactly; an identity is no longer expected."""
        result = self.identity.result_bytes
        return {FrameType.RESULT: (result, result), FrameType.LOADED: (0, 0), FrameType.ERROR: (1, 1)}

    @classmethod
    def open(cls, url: str, baudrate: int = 115200, **options) -> "Accelerator":
        import serial     # pyserial: only for opening a URL (a port object may be passed in directly)

        try:
            port = serial.serial_for_url(url, baudrate=baudrate, timeout=0)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise BoardError(f"cannot open {url}: {exc}") from exc
        return cls(port, **options)

    def __enter__(self) -> "Accelerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.port.close()
        except Exception:       # closing a port that already failed must not hide the real error
            pass

    # ------------------------------------------------------------------ frames

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    def _receive(self, wait: float) -> list:
        """Frames that arrived, waiting up to ``wait`` seconds for the first bytes."""
        deadline = time.monotonic() + wait
        while True:
            try:
                waiting = getattr(self.port, "in_waiting", 0)
                data = self.port.read(max(1, waiting))
            except OSError as exc:
                raise BoardError(f"the port failed: {exc}") from exc
            if data:
                frames = self.decoder.feed(data)
                if frames:
                    return frames
                continue
            if time.monotonic() >= deadline:
                return []
            time.sleep(self.poll)

    def _send(self, frame: bytes) -> None:
        try:
            self.port.write(frame)
        except OSError as exc:
            raise BoardError(f"the port failed: {exc}") from exc

    # ------------------------------------------------------------------ identify

    def identify(self) -> Identity:
        """Ask the board what it runs (IDENTIFY, with retries); this starts our session."""
        self.decoder.lengths = self._identifying_lengths()
        for _ in range(self.retries + 1):
            seq = self._next_seq()
            self._send(encode_frame(FrameType.IDENTIFY, seq))
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                for frame in self._receive(deadline - time.monotonic()):
                    if frame.type == FrameType.IDENTITY and frame.seq == seq:
                        try:
                            self.identity = Identity.decode(frame.payload)
                        except ValueError as exc:
                            raise BoardError(f"the board's identity is not understood: {exc}") from exc
                        self.decoder.lengths = self._running_lengths()
                        return self.identity
                    self.stats.unexpected_replies += 1
        raise BoardTimeout(f"no identity from the board after {self.retries + 1} tries of {self.timeout:g} s "
                           "(wrong port or baud rate, or no spikesmith bitstream?)")

    def expect(self, net) -> Identity:
        """Identify the board and refuse it unless it runs ``net`` (same fingerprint)."""
        identity = self.identity or self.identify()
        want = fingerprint(net)
        if identity.fingerprint_text != want:
            raise WrongNetworkError(f"the board runs network {identity.fingerprint_text[:19]}..., "
                                    f"not {want[:19]}... (build and load the bitstream for this network)")
        return identity

    # ------------------------------------------------------------------ run-time weights

    def load_weights(self, plan: CorePlan, progress=None) -> int:
        """Write the weight rows the board keeps in RAM (SPRAM), then commit; return the rows sent.

        ``plan`` is the board's core plan (``spikesmith.gen.board.plan_for_identity`` makes it
        from the network and the identity's lanes); its rows are packed as the core reads them
        (:meth:`CorePlan.weight_loads`), up to ``identity.load_rows`` consecutive rows a LOAD.
        ``progress(done, total)`` is called as rows are acknowledged. Up to ``window`` LOADs are in
        flight; a damaged or missing acknowledgement resends its LOAD.
        """
        identity = self.identity or self.identify()
        if plan.fingerprint != identity.fingerprint_text:
            raise WrongNetworkError(f"the plan is for network {plan.fingerprint[:19]}..., the board runs "
                                    f"{identity.fingerprint_text[:19]}...")
        if plan.lane_counts != identity.lanes:
            raise WrongNetworkError(f"the plan has lanes {list(plan.lane_counts)}, the board "
                                    f"{list(identity.lanes)}")
        if plan.loaded_flags != identity.loaded:
            raise WrongNetworkError("the plan and the board keep different layers' weights in RAM")
        if not plan.loaded_layers:
            return 0
        if plan.load_bytes != identity.load_bytes:
            raise WrongNetworkError(f"the board takes {identity.load_bytes}-byte weight rows, this network's "
                                    f"are {plan.load_bytes}")
        payloads = load_payloads(identity, plan.weight_loads())
        self._acknowledged(payloads, progress)
        self._acknowledged([(identity.encode_load(COMMIT_LAYER, 0), 0)])     # after every row is in
        return sum(rows for _, rows in payloads)

    def _acknowledged(self, payloads: list[tuple[bytes, int]], progress=None) -> None:
        """Send LOAD ``payloads`` (each with its row count), ``window`` at a time, until each is
        acknowledged (LOADED); ``progress(rows done, rows)``."""
        pending = iter(enumerate(payloads))
        in_flight: dict[int, _InFlight] = {}
        done, exhausted, total = 0, False, sum(rows for _, rows in payloads)
        while True:
            while not exhausted and len(in_flight) < self.window:
                try:
                    index, (payload, _) = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                seq = self._next_seq()
                in_flight[seq] = _InFlight(index, encode_frame(FrameType.LOAD, seq, payload), time.monotonic())
                self._send(in_flight[seq].frame)
            if exhausted and not in_flight:
                return
            for frame in self._replies(in_flight):
                request = in_flight.get(frame.seq)
                if request is None or frame.type not in (FrameType.LOADED, FrameType.ERROR):
                    self.stats.unexpected_replies += 1
                elif frame.type == FrameType.LOADED:
                    del in_flight[frame.seq]
                    done += payloads[request.index][1]
                    if progress:
                        progress(done, total)
                else:
                    code = frame.payload[0] if frame.payload else 0
                    self._resend(frame.seq, request, f"board error {code}", "weight LOAD",
                                 refusal=code in (ErrorCode.LENGTH, ErrorCode.TYPE))
            self._resend_overdue(in_flight, "weight LOAD")

    # ------------------------------------------------------------------ inference

    @property
    def window(self) -> int:
        board = self.identity.window if self.identity else 1
        return max(1, min(board, self.requested_window or board))

    def infer(self, codes: Iterable, progress=None) -> Iterator[InferenceResult]:
        """Stream images (each a sequence of ``inputs`` codes); yield their results in order."""
        identity = self.identity or self.identify()
        images = iter(enumerate(codes))
        in_flight: dict[int, _InFlight] = {}
        done: dict[int, InferenceResult] = {}
        next_out, exhausted = 0, False
        start = time.monotonic()
        try:
            while True:
                while not exhausted and len(in_flight) < self.window:
                    try:
                        index, image = next(images)
                    except StopIteration:
                        exhausted = True
                        break
                    image = np.asarray(image).reshape(-1)
                    if image.size != identity.inputs:
                        raise BoardError(f"image {index} has {image.size} codes; the board takes {identity.inputs}")
                    seq = self._next_seq()
                    frame = encode_frame(FrameType.INFER, seq, identity.encode_image(image))
                    in_flight[seq] = _InFlight(index, frame, time.monotonic())
                    self._send(frame)
                while next_out in done:
                    result = done.pop(next_out)
                    self.stats.images += 1
                    self.stats.latencies.append(result.latency)
                    self.stats.seconds = time.monotonic() - start
                    if progress:
                        progress(self.stats.images)
                    yield result
                    next_out += 1
                if exhausted and not in_flight and not done:
                    return
                for frame in self._replies(in_flight):
                    self._handle(frame, in_flight, done, identity)
                self._resend_overdue(in_flight)
        finally:
            self.stats.seconds = time.monotonic() - start

    def _handle(self, frame, in_flight: dict, done: dict, identity: Identity) -> None:
        request = in_flight.get(frame.seq)
        if request is None or frame.type not in (FrameType.RESULT, FrameType.ERROR):
            self.stats.unexpected_replies += 1
            return
        if frame.type == FrameType.ERROR:
            code = frame.payload[0] if frame.payload else 0
            name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else f"code {code}"
            self.stats.board_errors[name] = self.stats.board_errors.get(name, 0) + 1
            if code == ErrorCode.NOT_LOADED:
                raise BoardError("the board's run-time weights are not loaded (load_weights() does it)")
            # A length or type refusal of a well-formed request is damage on the way in (the identity
            # said what the board takes): resend; the same refusal every time means another network.
            self._resend(frame.seq, request, f"board error {name}",
                         refusal=code in (ErrorCode.LENGTH, ErrorCode.TYPE))
            return
        try:
            label, logits = identity.decode_result(frame.payload)
        except ValueError:
            self.stats.unexpected_replies += 1
            return
        del in_flight[frame.seq]
        self.stats.most_sends = max(self.stats.most_sends, request.attempts)
        done[request.index] = InferenceResult(request.index, label, logits, time.monotonic() - request.sent)

    def _replies(self, in_flight: dict) -> list:
        """Frames that arrive before the oldest request in flight is due for a resend."""
        oldest = min((f.sent for f in in_flight.values()), default=time.monotonic())
        return self._receive(max(0.0, oldest + self.timeout - time.monotonic()))

    def _resend_overdue(self, in_flight: dict, what: str = "image") -> None:
        """Resend every request in flight that has waited ``timeout`` for its reply."""
        now = time.monotonic()
        for seq, request in in_flight.items():
            if now - request.sent >= self.timeout:
                self._resend(seq, request, "no reply", what)

    def _resend(self, seq: int, request: _InFlight, why: str, what: str = "image", refusal: bool = False) -> None:
        if request.attempts > self.retries and refusal:
            raise BoardError(f"the board refused {what} {request.index} {request.attempts} times ({why}): "
                             "does it run the network you expect?")
        if request.attempts > self.retries:
            raise BoardTimeout(f"{what} {request.index}: {why} after {request.attempts} sends "
                               f"(timeout {self.timeout:g} s, {self.retries} retries); is the board still running?")
        request.attempts += 1
        request.sent = time.monotonic()
        self.stats.resent += 1
        self._send(request.frame)
