"""The board top: the spiking core behind a UART and the frame protocol of docs/protocol.md.

    rx -> UARTReceiver -> byte FIFO -> FrameReceiver -> ImageLoader -> SpikingCore
                                            |  \\-> WeightLoader ----------^ (run-time weights, a LOAD's rows)
                                            +--> in-flight, error, ack FIFOs, identify
    tx <- UARTTransmitter <- FrameTransmitter <- results (+ their sequence numbers), identity, errors

A request is checked whole (type, length, CRC) before its image reaches the core, so a
damaged request never computes; the board answers it with an ERROR frame and hunts for the
next sync byte. At most ``window`` images are in flight (received, result not yet sent);
one more gets ERROR BUSY. The identity ROM holds the network's fingerprint and the core's
parameters, so the host driver refuses a board that runs another network. Frame types,
error codes and the CRC come from ``spikesmith.contract.protocol``.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import crc, data, enum, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract.plan import BoardParams
from ..contract.protocol import COMMIT_LAYER, CRC_BYTES, LOAD_HEAD, SYNC, ErrorCode, FrameType
from .core import SpikingCore, core_result_layout, core_weight_load_layout
from .events import image_beat_layout, index_signal
from .onehot import OneHotFSM
from .rows import NO_COLLISIONS, mux_tree
from .streams import SlowStreamRegister
from .uart import UARTReceiver, UARTTransmitter

__all__ = ["BoardTop", "FrameCRC", "FrameReceiver", "FrameTransmitter", "ImageLoader", "WeightLoader", "FrameKind",
           "ErrorKind", "ErrorReport", "InFlight", "ImageHandoff", "WeightWrite", "LoadRequest"]


class FrameKind(enum.Enum, shape=8):
    """A frame's type byte (the values of ``spikesmith.contract.protocol.FrameType``)."""
    IDENTIFY = FrameType.IDENTIFY.value
    INFER = FrameType.INFER.value
    LOAD = FrameType.LOAD.value
    IDENTITY = FrameType.IDENTITY.value
    RESULT = FrameType.RESULT.value
    LOADED = FrameType.LOADED.value
    ERROR = FrameType.ERROR.value


class ErrorKind(enum.Enum, shape=8):
    """An ERROR frame's code (the values of ``spikesmith.contract.protocol.ErrorCode``)."""
    CRC = ErrorCode.CRC.value
    LENGTH = ErrorCode.LENGTH.value
    TYPE = ErrorCode.TYPE.value
    BUSY = ErrorCode.BUSY.value
    NOT_LOADED = ErrorCode.NOT_LOADED.value


#: An ERROR frame to send: the refused request's ``seq`` and the error ``code``.
ErrorReport = data.StructLayout({"seq": 16, "code": ErrorKind})
#: An image in flight: its request's ``seq`` and the session (``generation``) it was taken in.
InFlight = data.StructLayout({"seq": 16, "generation": 8})


class FrameCRC(wiring.Component):
    """CRC-32/ISO-HDLC (zlib's) of a frame's ``type .. payload`` bytes, as the host computes it.

    ``byte``, ``take``: a byte to sum (registered here), at most one every two cycles; ``start``:
    begin a frame (registered). ``busy``: a flip-flop, set for the two cycles after a take, while
    the byte is summed. ``crc``: the 32-bit CRC, complete once ``busy`` falls after the last byte.

    amaranth.lib.crc's processor takes the byte a nibble a cycle, low nibble first (the reflected
    CRC's order, so the CRC is the byte-wide one): 60 iCE40 LUTs where a byte a cycle took 103
    (its 32 XOR trees of up to 16 inputs), and the UART brings a byte every 10 bit times.
    """

    #: ``crc`` after a frame's bytes and then its own CRC (low byte first): the processor's residue, as ``crc``
    #: shows it (``zlib.crc32`` of any frame's body and CRC: 0x2144DF1C).
    RESIDUE = crc.catalog.CRC32_ISO_HDLC(data_width=4).residue() ^ crc.catalog.CRC32_ISO_HDLC.xor_output

    def __init__(self):
        super().__init__({"byte": In(8), "take": In(1), "start": In(1), "crc": Out(8 * CRC_BYTES),
                          "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.processor = processor = crc.catalog.CRC32_ISO_HDLC(data_width=4).create()
        assert len(processor.crc) == 8 * CRC_BYTES
        nibbles, low, high, start = Signal(8), Signal(), Signal(), Signal()   # low, high: that nibble's cycle
        with m.If(self.take):
            m.d.sync += nibbles.eq(self.byte)
        with m.Elif(low):
            m.d.sync += nibbles.eq(nibbles >> 4)          # the high nibble next
        m.d.sync += [low.eq(self.take), high.eq(low), start.eq(self.start), self.busy.eq(self.take | low)]
        m.d.comb += [processor.data.eq(nibbles[:4]), processor.valid.eq(low | high), processor.start.eq(start),
                     self.crc.eq(processor.crc)]
        return m


#: The states of a frame's CRC bytes, low byte first (receiver and transmitter).
_CRC_STATES = tuple(f"CRC{k}" for k in range(CRC_BYTES))


#: A LOAD's head as received (docs/protocol.md): ``layer``, first row ``address``, row ``count``.
LoadRequest = data.StructLayout({"layer": 8, "address": 16, "count": 8})


class ImageHandoff(wiring.Signature):
    """The frame receiver's hold on the image buffer, from the receiver's side.

    ``addr``/``data``/``en``: codes of the image being received, into word ``addr`` (``words``
    words of ``lanes`` codes of ``timesteps`` bits); ``en`` has a bit per lane, and a lane is
    written where its bit is set. ``start``: one cycle, the request passed its CRC: load the image
    into the core. ``busy``: the buffer still holds an image not yet in the core.
    """

    def __init__(self, words: int, lanes: int, timesteps: int):
        super().__init__({"addr": Out(range(max(2, words))), "data": Out(lanes * timesteps), "en": Out(lanes),
                          "start": Out(1), "busy": In(1)})


class WeightWrite(wiring.Signature):
    """The frame receiver's hold on the LOAD buffer, from the receiver's side.

    ``addr``/``data``/``en``: a row of the LOAD being received (at most ``rows`` rows of
    ``8 * load_bytes`` bits). ``start``: one cycle, the LOAD passed its CRC: write its ``request.count``
    rows at ``request.address``, ``address + 1``, ... of ``request.layer``, or commit (layer
    ``COMMIT_LAYER``). ``busy``: the buffer's rows are not all written yet. ``loaded``: committed.
    """

    def __init__(self, load_bytes: int, rows: int):
        super().__init__({"addr": Out(range(max(2, rows))), "data": Out(8 * load_bytes), "en": Out(1),
                          "start": Out(1), "request": Out(LoadRequest), "busy": In(1), "loaded": In(1)})


class FrameReceiver(wiring.Component):
    """Bytes from the UART -> checked requests (docs/protocol.md, "Frames").

    ``bytes``: the received bytes. ``image``: the image buffer (:class:`ImageLoader`).
    ``requests``: the seq and session of each accepted INFER (the in-flight FIFO);
    ``in_flight``: some image's result is not yet sent. ``generation``: the session, counted
    up by every accepted IDENTIFY (docs/protocol.md, "Sessions"). ``errors``: refusals to send. ``identify``: the seq of an
    IDENTIFY, held until the transmitter takes it. ``weights``: checked LOADs (only when the
    core keeps weights in RAM).
    """

    def __init__(self, params: BoardParams):
        self.params = params
        plan = params.plan
        members = {
            "bytes": In(stream.Signature(8)),
            "image": Out(ImageHandoff(plan.input.words, plan.input.lanes, plan.timesteps)),
            "requests": Out(stream.Signature(InFlight)),
            "in_flight": In(1),
            "generation": Out(8),
            "errors": Out(stream.Signature(ErrorReport)),
            "identify": Out(stream.Signature(16)),
            "acks": Out(stream.Signature(16)),
        }
        if params.load_bytes:
            members["weights"] = Out(WeightWrite(params.load_bytes, params.load_rows))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.crc = self._crc = FrameCRC()
        self._seq, self._kind, self._length = Signal(16), Signal(FrameKind, init=FrameKind.IDENTIFY), Signal(16)
        self._count = index_signal(p.image_bytes + 1)        # an INFER's payload bytes
        self._last_byte = Signal()                           # _count is at the image's last byte (registered)
        self._crc_ok = Signal(CRC_BYTES)  # each byte of the frame's CRC matched (registered: a cycle of its own)
        self._take = Signal()            # the byte on offer is taken (a register: decided a cycle ahead)
        self._sync = Signal()            # the byte on offer is SYNC (a register: see _take_bytes)
        self._refusing, self._refusal = Signal(), Signal(ErrorKind, init=ErrorKind.CRC)   # a refusal now, its code
        self._pending, self._pending_code = Signal(), Signal(ErrorKind, init=ErrorKind.CRC)   # ... a cycle later
        self._room = Signal()                                # room for a refusal (:meth:`_refusal_room`)
        self._load = Signal(LoadRequest)                       # (unused without run-time weights)
        self._row = Signal(8 * max(1, p.load_bytes))          # the row being received, first byte in the LSBs
        self._row_byte, self._row_index = index_signal(p.load_bytes), index_signal(p.load_rows)
        self._last_row_index = Signal(8)             # a LOAD's count less one, from COUNTED on
        lanes, T = p.plan.input.lanes, p.plan.timesteps
        self._word = index_signal(p.plan.input.words)
        self._pixel = index_signal(p.plan.input.size)     # the code's pixel and channel group, when the core
        self._group = index_signal(p.plan.input.size)     # reads pixel by pixel
        self._lane = Signal(lanes, init=1)           # the lane the next code goes to, one-hot
        m.d.comb += self.bytes.ready.eq(self._take)
        with m.If(self.identify.ready):
            m.d.sync += self.identify.valid.eq(0)
        with m.If(self.errors.ready):                    # (a refusal this cycle takes the register again)
            m.d.sync += self.errors.valid.eq(0)
        # One flip-flop per state: the decode of a binary state led the receiver's paths on the iCE40.
        self._fsm = OneHotFSM(m, "receive", initial="HUNT")
        # The states that take the byte on offer, and those of them that sum it into the CRC: a flip-flop
        # each (an OR of eleven state flip-flops was two LUTs of the iCE40's slowest path, into `ready`).
        summed = ["TYPE", "SEQ0", "SEQ1", "LEN0", "LEN1", "PAYLOAD", *_CRC_STATES]   # (the CRC too: its residue)
        if self.params.load_bytes:
            summed += ["LOAD", "ADDR0", "ADDR1", "COUNT", "ROWS"]
        self._summing = self._fsm.group("summing", summed)
        self._taking = self._fsm.group("taking", [*summed, "HUNT"])
        self._refusals(m)
        self._header(m)
        self._image_payload(m)
        if self.params.load_bytes:                   # (LEN1 refuses a LOAD otherwise)
            self._load_head(m)
            self._load_rows(m)
        self._check(m)
        self._take_bytes(m)
        return m

    def _take_bytes(self, m: Module) -> None:
        """Which states take the byte on offer (``_taking``), and which of them sum it into the CRC
        (``_summing``): flip-flops of the state machine (assigned state by state, it was a chain of
        multiplexers in front of the CRC). PAYLOAD waits while the image buffer is busy, ROWS while the LOAD buffer is.

        ``_take`` is a register, decided a cycle ahead and never two cycles running, so it starts the
        receiver's paths (the buffers' busy, the take and the image buffer's write address were one path,
        the iCE40's slowest). The decision still holds a cycle later: the byte on offer stays until taken,
        a taking state leaves only on a take, and the buffers turn busy only from ACT. A byte every two
        cycles at most: the UART brings one every 10 bit times."""
        bits, byte, available, summing = self._fsm.bits, self.bytes.payload, self.bytes.valid, self._summing
        waiting = bits["PAYLOAD"] & self.image.busy
        if self.params.load_bytes:
            waiting |= bits["ROWS"] & self.weights.busy
        m.d.sync += self._take.eq(available & ~self._take & ~waiting & self._taking)
        # Whether the byte on offer is SYNC, compared a cycle ahead like the take: a taken byte was on offer
        # the cycle before (its compare, then the hunt's transition and the CRC's start, were the digits
        # CNN's slowest path on the iCE40 with the CRC-32).
        m.d.sync += self._sync.eq(byte == SYNC)
        # The CRC takes each byte into registers and sums it in the two cycles after (the received byte's
        # compares and the CRC's XORs were one path into its register), before the next take; it is read in
        # COMPARE, bytes after the last one it sums.
        m.d.comb += [self._crc.byte.eq(byte), self._crc.take.eq(self._take & summing),
                     self._crc.start.eq(self._take & bits["HUNT"] & self._sync)]

    def _refuse(self, m: Module, code: ErrorKind) -> None:
        """Queue a refusal: a register in front of the refusal queue (only when :meth:`_refusal_room`)."""
        m.d.comb += [self._refusing.eq(1), self._refusal.eq(code)]

    def _refusals(self, m: Module) -> None:
        """The refusal register, written in one place (each of the seven refusals writing it was a layer of
        multiplexers on its 24 bits: ~360 logic cells), a cycle after the refusal: the refusal and its code
        wait in ``_pending`` registers (the OR of the seven refusals' conditions in front of the refusal
        register's valid was the iCE40's slowest path). The seq is still the refused frame's then: a frame's
        seq comes at least three bytes after the refusal sends the receiver hunting."""
        m.d.sync += [self._pending.eq(self._refusing), self._pending_code.eq(self._refusal)]
        # Room for a refusal, a cycle old: only a refusal takes room away (the queue fills from the refusal
        # register alone), a refusal now leaves none next cycle, and the next refusal is a frame header later.
        # (The room's compare in front of the states' transitions was the iCE40's slowest path.)
        m.d.sync += self._room.eq(~self._refusing & ~self._pending & (~self.errors.valid | self.errors.ready))
        with m.If(self._pending):
            m.d.sync += [self.errors.valid.eq(1), self.errors.payload.seq.eq(self._seq),
                         self.errors.payload.code.eq(self._pending_code)]

    def _refusal_room(self):
        """No refusal waits, and the refusal register is empty or goes into the queue this cycle (a register
        set a cycle ahead: :meth:`_refusals`)."""
        return self._room

    def _field_states(self, m: Module, fields) -> None:
        """One state per byte of a frame's fixed fields ``(state, target, next state)``: the byte
        (CRC'd) goes into its target."""
        byte = self.bytes.payload
        for state, target, following in fields:
            with self._fsm.State(state):
                with m.If(self._take):
                    m.d.sync += target.eq(byte)
                    self._fsm.next = following

    def _header(self, m: Module) -> None:
        """Hunt for SYNC, then type, seq and length; the length decides what follows."""
        p, byte = self.params, self.bytes.payload
        with self._fsm.State("HUNT"):
            with m.If(self._take & self._sync):
                self._fsm.next = "TYPE"
        self._field_states(m, (("TYPE", self._kind, "SEQ0"), ("SEQ0", self._seq[:8], "SEQ1"),
                               ("SEQ1", self._seq[8:], "LEN0"), ("LEN0", self._length[:8], "LEN1")))
        with self._fsm.State("LEN1"):
            with m.If(self._take):
                m.d.sync += [self._length[8:].eq(byte), self._count.eq(0), self._last_byte.eq(p.image_bytes == 1),
                             self._lane.eq(1), self._word.eq(0), self._pixel.eq(0), self._group.eq(0)]
                self._fsm.next = "DECIDE"
        # The header is in registers: DECIDE compares it into flags (registers), ROUTE acts on them (what
        # follows, or a refusal), so no cycle runs from the length's compare to the refusal and the state.
        expected = {"identify": Signal(), "infer": Signal(), "load": Signal(), "known": Signal()}
        loads = bool(p.load_bytes)
        with self._fsm.State("DECIDE"):
            length, kind = self._length, self._kind
            m.d.sync += [expected["identify"].eq((kind == FrameKind.IDENTIFY) & (length == 0)),
                         expected["infer"].eq((kind == FrameKind.INFER) & (length == p.image_bytes)),
                         expected["load"].eq((kind == FrameKind.LOAD) & (length >= LOAD_HEAD)
                                             & (length <= p.load_payload_bytes) if loads else 0),
                         expected["known"].eq((kind == FrameKind.IDENTIFY) | (kind == FrameKind.INFER)
                                              | ((kind == FrameKind.LOAD) & loads))]
            self._fsm.next = "ROUTE"
        with self._fsm.State("ROUTE"):
            with m.If(self._refusal_room()):             # room for a refusal: none is dropped
                with m.If(expected["identify"]):
                    self._fsm.next = "CRC0"
                with m.Elif(expected["infer"]):
                    self._fsm.next = "PAYLOAD"
                if loads:
                    with m.Elif(expected["load"]):
                        self._fsm.next = "LOAD"         # the exact length is checked against the row count
                with m.Elif(expected["known"]):
                    self._refuse(m, ErrorKind.LENGTH)
                    self._fsm.next = "HUNT"
                with m.Else():
                    self._refuse(m, ErrorKind.TYPE)
                    self._fsm.next = "HUNT"

    def _image_payload(self, m: Module) -> None:
        """An INFER's codes, each written into its lane of the image buffer (the buffer's write enable has
        a bit per lane: a word of codes gathered in a register cost ~450 logic cells at 8 lanes of 8 steps).
        The last word's lanes past the image are written with zeros by the image's last code."""
        p, plan, byte = self.params, self.params.plan, self.bytes.payload
        T, lanes = plan.timesteps, plan.input.lanes
        lane, word = self._lane, self._word
        real = plan.input.size - (plan.input.words - 1) * lanes      # lanes of the last word that hold codes
        padding = ((1 << lanes) - 1) ^ ((1 << real) - 1)
        low_byte = Signal(8)                         # first byte of a two-byte code
        count, last_byte = self._count, self._last_byte
        if p.code_bytes == 2:
            code_done, code = count[0], Cat(low_byte, byte)[:T]
        else:
            code_done, code = Const(1), byte[:T]
        # The word and the codes go to the buffer in every cycle and only `en` says when: under the byte's
        # take they were a multiplexer behind it (the iCE40's slowest path, into the write address).
        zero_or_code = Mux(last_byte, 0, code)
        m.d.comb += [self.image.addr.eq(word), self.image.data.eq(Cat(*[code] * real, *[zero_or_code] * (lanes - real)))]
        with self._fsm.State("PAYLOAD"):
            # The image buffer is free only once the previous image went into the core.
            with m.If(self._take):
                # (last_byte: the count's compare, a cycle ahead; in front of the image write, it was 2 LUTs deep)
                m.d.sync += [count.eq(count + 1), last_byte.eq(count == p.image_bytes - 2)]
                if p.code_bytes == 2:
                    with m.If(~count[0]):
                        m.d.sync += low_byte.eq(byte)
                with m.If(code_done):
                    m.d.comb += self.image.en.eq(lane | Mux(last_byte, padding, 0))
                    if self._channel_major_wire(plan):
                        self._next_pixel_major_word(m)
                    else:
                        with m.If(lane[lanes - 1] | last_byte):
                            m.d.sync += [lane.eq(1), word.eq(word + 1)]
                        with m.Else():
                            m.d.sync += lane.eq(lane << 1)
                with m.If(last_byte):
                    self._fsm.next = "CRC0"

    @staticmethod
    def _channel_major_wire(plan) -> bool:
        """The wire carries an image's codes channel by channel (docs/protocol.md) while the core reads them
        pixel by pixel (a streaming first layer on images of more than one channel)."""
        return plan.input.pixel_major and plan.input.pixels[0] > 1

    def _next_pixel_major_word(self, m: Module) -> None:
        """Where the next code goes when the core reads pixels: code ``(c, p)`` (channel-major on the wire) is
        lane ``c % L`` of word ``p * G + c // L`` (``G = C / L`` words a pixel): the word steps by ``G`` per
        pixel; after a channel's last pixel the lane moves on (and the word restarts at the next group)."""
        plan = self.params.plan
        channels, height, width = plan.input.pixels
        lanes, groups = plan.input.lanes, channels // plan.input.lanes
        pixel, group = self._pixel, self._group
        with m.If(self._last_byte):
            m.d.sync += [pixel.eq(0), group.eq(0), self._lane.eq(1), self._word.eq(0)]
        with m.Elif(pixel == height * width - 1):
            m.d.sync += pixel.eq(0)
            with m.If(self._lane[lanes - 1]):
                m.d.sync += [self._lane.eq(1), group.eq(group + 1), self._word.eq(group + 1)]
            with m.Else():
                m.d.sync += [self._lane.eq(self._lane << 1), self._word.eq(group)]
        with m.Else():
            m.d.sync += [pixel.eq(pixel + 1), self._word.eq(self._word + groups)]

    def _load_head(self, m: Module) -> None:
        """A LOAD's layer, address and row count; the length must be exactly ``LOAD_HEAD + count *
        load_bytes`` with 1 to ``load_rows`` rows (none for the commit), else it is refused here."""
        p, byte = self.params, self.bytes.payload
        # Whether the LOAD names a layer with run-time weights (or commits), in a register: the layer is
        # received long before ACT (its compares in front of the acknowledgement were the iCE40's slowest path).
        target, self._load_known = self._load.layer, Signal()
        m.d.sync += self._load_known.eq((target == COMMIT_LAYER)
                                        | Cat(target == layer.index for layer in p.plan.loaded_layers).any())
        self._field_states(m, (("LOAD", self._load.layer, "ADDR0"), ("ADDR0", self._load.address[:8], "ADDR1"),
                               ("ADDR1", self._load.address[8:], "COUNT")))
        with self._fsm.State("COUNT"):
            with m.If(self._take):
                m.d.sync += [self._load.count.eq(byte), self._row_byte.eq(0), self._row_index.eq(0)]
                self._fsm.next = "COUNTED"
        self._load_size(m)

    def _load_size(self, m: Module) -> None:
        """A LOAD's row count against its length, in three cycles from registers: COUNTED computes the length
        the count implies, SIZING compares it, SIZED acts (the count's product, the length's compare and the
        refusal were one path into the state, the iCE40's slowest for a 3-hidden-layer MLP)."""
        p, count, commit = self.params, self._load.count, Signal()
        rows_fit, sized = Signal(), Signal()         # sized: rows_fit, and exactly as long as implied
        implied = Signal(range(LOAD_HEAD + 255 * p.load_bytes + 1))      # (wider than the length: no wrap)
        with self._fsm.State("COUNTED"):
            is_commit = self._load.layer == COMMIT_LAYER
            # At most load_rows follows from the length (LEN1 bounds it); 255 rows would make the compare constant.
            # (The last row's compare with count - 1 in ROWS was a carry chain on the receiver's slowest path.)
            m.d.sync += [self._last_row_index.eq(count - 1), commit.eq(is_commit),
                         rows_fit.eq(Mux(is_commit, count == 0, count != 0)),
                         implied.eq(LOAD_HEAD + count * p.load_bytes)]
            self._fsm.next = "SIZING"
        with self._fsm.State("SIZING"):
            m.d.sync += sized.eq(rows_fit & (self._length == implied))
            self._fsm.next = "SIZED"
        with self._fsm.State("SIZED"):
            with m.If(self._refusal_room()):                 # room for a refusal: none is dropped
                with m.If(~sized):
                    self._refuse(m, ErrorKind.LENGTH)
                    self._fsm.next = "HUNT"
                with m.Elif(commit):
                    self._fsm.next = "CRC0"
                with m.Else():
                    self._fsm.next = "ROWS"

    def _load_rows(self, m: Module) -> None:
        """A LOAD's rows into the LOAD buffer, each row's first byte in its LSBs; only once the
        previous LOAD's rows are all written (``busy``), so the buffer never holds two LOADs."""
        p, byte = self.params, self.bytes.payload
        row = Cat(self._row[8:8 * p.load_bytes], byte)
        # The row and its address go to the buffer in every cycle and only `en` says when: under the
        # byte's take they were a multiplexer behind it (the iCE40's slowest path, into the write address).
        m.d.comb += [self.weights.addr.eq(self._row_index), self.weights.data.eq(row)]
        with self._fsm.State("ROWS"):
            with m.If(self._take):
                m.d.sync += [self._row.eq(row), self._row_byte.eq(self._row_byte + 1)]
                with m.If(self._row_byte == p.load_bytes - 1):
                    m.d.comb += self.weights.en.eq(1)
                    m.d.sync += [self._row_byte.eq(0), self._row_index.eq(self._row_index + 1)]
                    with m.If(self._row_index == self._last_row_index):
                        self._fsm.next = "CRC0"

    def _check(self, m: Module) -> None:
        """The CRC; then the request is accepted (and answered later) or refused now."""
        # The CRC sums the frame's CRC bytes too, and COMPARE checks it against the residue of a frame with
        # its own CRC, once it has summed the last one: no register of received CRC bytes (32 flip-flops),
        # and compares with constants, half the LUTs of a compare of two registers.
        for k, state in enumerate(_CRC_STATES):
            with self._fsm.State(state):
                with m.If(self._take):
                    self._fsm.next = _CRC_STATES[k + 1] if k + 1 < CRC_BYTES else "COMPARE"
        with self._fsm.State("COMPARE"):
            # Byte by byte, into a flag each (one 16-bit compare was three LUTs and two long routes from the
            # CRC's register); CHECK reads their AND, one LUT.
            with m.If(~self._crc.busy):
                m.d.sync += self._crc_ok.eq(Cat(self._crc.crc.word_select(k, 8) == ((FrameCRC.RESIDUE >> 8 * k) & 0xFF)
                                                for k in range(CRC_BYTES)))
                self._fsm.next = "CHECK"
        # Wait for room for any answer, so no request is ever silently dropped (and for the LOAD buffer's
        # rows to be written: a commit must not overtake them). Registered, with what CHECK decides on:
        # only the receiver's own acts in CHECK take room away (it then leaves CHECK), so a cycle-old
        # value is never too hopeful, and the decision starts from registers.
        room, loaded, request_room = Signal(), Signal(), Signal()
        m.d.sync += [room.eq(self._refusal_room() & self.acks.ready & ~self.identify.valid & ~self.image.busy
                             & ~self._weights_busy()),
                     loaded.eq(self._loaded()), request_room.eq(self.requests.ready)]
        # CHECK decides into one-hot verdict registers; ACT acts on them a cycle later (the decision and
        # the answer queues' writes were one path). Room is still there: only ACT takes it.
        verdicts = ("crc", "identify", "load", "not_loaded", "busy", "accept")
        verdict = {name: Signal(name=f"verdict_{name}") for name in verdicts}
        with self._fsm.State("CHECK"):
            with m.If(room):
                m.d.sync += [flag.eq(0) for flag in verdict.values()]
                with m.If(~self._crc_ok.all()):
                    m.d.sync += verdict["crc"].eq(1)
                with m.Elif(self._kind == FrameKind.IDENTIFY):     # a new session: older results are dropped
                    m.d.sync += verdict["identify"].eq(1)
                if self.params.load_bytes:                   # (LEN1 refuses a LOAD otherwise)
                    with m.Elif(self._kind == FrameKind.LOAD):
                        m.d.sync += verdict["load"].eq(1)
                with m.Elif(~loaded):
                    m.d.sync += verdict["not_loaded"].eq(1)
                with m.Elif(~request_room):
                    m.d.sync += verdict["busy"].eq(1)
                with m.Else():
                    m.d.sync += verdict["accept"].eq(1)
                self._fsm.next = "ACT"
        with self._fsm.State("ACT"):
            with m.If(verdict["crc"]):
                self._refuse(m, ErrorKind.CRC)
            with m.If(verdict["identify"]):
                m.d.sync += [self.identify.valid.eq(1), self.identify.payload.eq(self._seq),
                             self.generation.eq(self.generation + 1)]
            if self.params.load_bytes:
                with m.If(verdict["load"]):
                    self._accept_load(m)
            with m.If(verdict["not_loaded"]):
                self._refuse(m, ErrorKind.NOT_LOADED)
            with m.If(verdict["busy"]):
                self._refuse(m, ErrorKind.BUSY)
            with m.If(verdict["accept"]):
                m.d.comb += [self.requests.valid.eq(1), self.requests.payload.seq.eq(self._seq),
                             self.requests.payload.generation.eq(self.generation), self.image.start.eq(1)]
            self._fsm.next = "HUNT"

    def _loaded(self):
        """Every run-time weight row written and committed (always, without run-time weights)."""
        return self.weights.loaded if self.params.load_bytes else Const(1)

    def _weights_busy(self):
        """The LOAD buffer's rows are still being written (never, without run-time weights)."""
        return self.weights.busy if self.params.load_bytes else Const(0)

    def _accept_load(self, m: Module) -> None:
        known = self._load_known
        with m.If(self.in_flight):                  # images in flight: the core is busy
            self._refuse(m, ErrorKind.BUSY)
        with m.Elif(~known):
            self._refuse(m, ErrorKind.LENGTH)
        with m.Else():
            m.d.comb += [self.weights.start.eq(1), self.weights.request.eq(self._load),
                         self.acks.valid.eq(1), self.acks.payload.eq(self._seq)]


class ImageLoader(wiring.Component):
    """The image buffer: filled by the frame receiver, then streamed into the core, a beat a cycle.

    ``receive``: the receiver's :class:`ImageHandoff`. ``images``: the core's image stream.
    """

    def __init__(self, params: BoardParams):
        self.params = params
        plan = params.plan
        super().__init__({
            "receive": In(ImageHandoff(plan.input.words, plan.input.lanes, plan.timesteps)),
            "images": Out(stream.Signature(image_beat_layout(plan.input.lanes, plan.timesteps))),
        })

    def elaborate(self, platform):
        m = Module()
        plan, words = self.params.plan, self.params.plan.input.words
        # (Written only while not busy, read for the core only while busy: no read meets a write.)
        m.submodules.image = image = memory.Memory(shape=plan.input.lanes * plan.timesteps, depth=max(2, words),
                                                   init=[], attrs=NO_COLLISIONS)
        write, read = image.write_port(granularity=plan.timesteps), image.read_port()
        m.d.comb += [write.addr.eq(self.receive.addr), write.data.eq(self.receive.data),
                     write.en.eq(self.receive.en)]
        busy, loading, word = Signal(), Signal(), index_signal(words + 1)
        following = Signal.like(word)                # word + 1, kept in a register (the sum fed the address)
        m.d.comb += [self.receive.busy.eq(busy), read.addr.eq(word), self.images.payload.eq(read.data)]
        with m.If(self.receive.start):
            m.d.sync += busy.eq(1)
        with m.If(busy & ~loading):                  # one cycle to read word 0
            m.d.sync += [loading.eq(1), word.eq(0), following.eq(1)]
            m.d.comb += read.addr.eq(0)
        with m.If(loading):
            m.d.comb += self.images.valid.eq(1)
            with m.If(self.images.ready):
                m.d.comb += read.addr.eq(following)
                m.d.sync += [word.eq(following), following.eq(following + 1)]
                with m.If(word == words - 1):
                    m.d.sync += [loading.eq(0), busy.eq(0)]
            with m.Else():
                m.d.comb += read.addr.eq(word)
        return m


class WeightLoader(wiring.Component):
    """The LOAD buffer (``load_rows`` rows of ``8 * load_bytes`` bits, one block RAM), filled by the
    frame receiver; a checked LOAD's rows go from it into the core's ``weights_load`` port, one row
    a cycle at consecutive addresses. A LOAD of rows clears the *loaded* flag; the commit (layer
    ``COMMIT_LAYER``) sets it (docs/protocol.md, LOAD).
    """

    def __init__(self, params: BoardParams):
        self.params = params
        super().__init__({"requests": In(WeightWrite(params.load_bytes, params.load_rows)),
                          "core": Out(core_weight_load_layout(params.plan))})

    def elaborate(self, platform):
        m = Module()
        p, plan, request = self.params, self.params.plan, self.requests.request
        # (Written only while not busy, read only while busy: no read meets a write.)
        m.submodules.buffer = buffer = memory.Memory(shape=8 * p.load_bytes, depth=max(2, p.load_rows), init=[],
                                                     attrs=NO_COLLISIONS)
        write, read = buffer.write_port(), buffer.read_port()
        m.d.comb += [write.addr.eq(self.requests.addr), write.data.eq(self.requests.data),
                     write.en.eq(self.requests.en)]
        loaded, reading, writing = Signal(), Signal(), Signal()     # writing: read.data is a row for the core
        layer, address, count, index = Signal(8), Signal(16), Signal(8), index_signal(p.load_rows)
        m.d.comb += [self.requests.loaded.eq(loaded), self.requests.busy.eq(reading | writing), read.addr.eq(index)]
        with m.If(self.requests.start):
            with m.If(request.layer == COMMIT_LAYER):
                m.d.sync += loaded.eq(1)
            with m.Else():
                m.d.sync += [loaded.eq(0), reading.eq(1), index.eq(0), layer.eq(request.layer),
                             address.eq(request.address), count.eq(request.count)]
        with m.If(reading):
            m.d.sync += index.eq(index + 1)
            with m.If(index == count - 1):
                m.d.sync += reading.eq(0)
        m.d.sync += writing.eq(reading)
        with m.If(writing):
            m.d.comb += [self.core.en.eq(1), self.core.layer.eq(layer), self.core.addr.eq(address[:plan.load_addr_width]),
                         self.core.data.eq(read.data[:plan.load_data_width])]
            m.d.sync += address.eq(address + 1)
        return m


class FrameTransmitter(wiring.Component):
    """Answers -> framed bytes for the UART: errors first, then LOAD acknowledgements, the
    identity, and results with the seq of their request (in order: the core keeps order).

    ``results``: the core's results; ``requests``: the in-flight FIFO's entries, one per
    result. An answer stays in its queue while its frame is sent (its payload bytes are read
    from the queue's output, one at a time) and is taken after the CRC. A result whose request
    came before the current ``generation`` (an earlier session) is taken and dropped, not sent.
    """

    def __init__(self, params: BoardParams):
        self.params = params
        plan = params.plan
        super().__init__({
            "bytes": Out(stream.Signature(8)),
            "errors": In(stream.Signature(ErrorReport)),
            "acks": In(stream.Signature(16)),
            "identify": In(stream.Signature(16)),
            "results": In(stream.Signature(core_result_layout(plan))),
            "requests": In(stream.Signature(InFlight)),
            "generation": In(8),
        })

    def _result_bytes(self) -> list:
        """The RESULT payload bytes of ``results``: the 16-bit label, then the logits sign-extended to
        ``logit_bytes`` each, little-endian."""
        p = self.params
        result = self.results.payload
        label = Cat(result.label, Const(0, 16))
        wire = [label[:8], label[8:16]]
        for k in range(p.plan.classes):
            logit = Value.cast(result.logits[k])
            wide = Cat(logit, logit[-1].replicate(8 * p.logit_bytes - len(logit)))
            wire += [wide[8 * b:8 * b + 8] for b in range(p.logit_bytes)]
        assert len(wire) == p.result_bytes
        return wire

    def _next_byte(self, m: Module, index, chosen: dict) -> Signal:
        """Payload byte ``index`` of the chosen answer (a register), read from its queue in three registered
        steps, each a few LUTs deep: which 4-byte word holds it, that word (of the result, and of the
        identity, a constant table), then the byte of the chosen one. (One multiplexer over all was seven
        LUTs deep on the iCE40.) The UART takes a byte in thousands of cycles: the steps cost nothing."""
        p = self.params
        word_index, result_word, identity_word, next_byte = Signal.like(index[2:]), Signal(32), Signal(32), Signal(8)
        m.d.sync += [word_index.eq(index[2:]), result_word.eq(mux_tree(_words(self._result_bytes()), word_index)),
                     identity_word.eq(mux_tree(_words([Const(byte, 8) for byte in p.identity]), word_index))]
        result_byte = mux_tree([result_word.word_select(k, 8) for k in range(4)], index[:2])
        identity_byte = mux_tree([identity_word.word_select(k, 8) for k in range(4)], index[:2])
        m.d.sync += next_byte.eq(Mux(chosen["result"], result_byte,
                                     Mux(chosen["identity"], identity_byte, self.errors.payload.code)))
        return next_byte

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.crc = frame_crc = FrameCRC()
        out_type, out_seq, out_len = Signal(FrameKind, init=FrameKind.ERROR), Signal(16), Signal(16)
        # The CRC takes each sent byte into registers (its take: set in _send_states) and sums it in the two
        # cycles after; no byte is offered while it does (SUM and CRC0 wait for the last one).
        m.d.comb += frame_crc.byte.eq(self.bytes.payload)
        kinds = ("error", "ack", "identity", "result", "dropped")
        # IDLE chooses an answer into one-hot `chosen` registers; LOAD copies its header; after the CRC,
        # `take` (registers, so each queue's ready is a flip-flop) takes it from its queue for one cycle.
        chosen = {kind: Signal(name=f"chosen_{kind}") for kind in kinds}
        taking = {kind: Signal(name=f"take_{kind}") for kind in kinds}
        m.d.comb += [self.errors.ready.eq(taking["error"]), self.acks.ready.eq(taking["ack"]),
                     self.identify.ready.eq(taking["identity"]),
                     self.results.ready.eq(taking["result"] | taking["dropped"]),
                     self.requests.ready.eq(taking["result"] | taking["dropped"])]
        m.d.sync += [take.eq(0) for take in taking.values()]
        # What the queues offer, registered: IDLE chooses from registers. Only a take empties a queue, and
        # IDLE comes two cycles after it (RELEASE, SETTLE), when these have seen the queue emptied.
        offered = {kind: Signal(name=f"offered_{kind}") for kind in ("error", "ack", "identity", "result")}
        current = Signal()                          # the offered result's request is of this session
        m.d.sync += [offered["error"].eq(self.errors.valid), offered["ack"].eq(self.acks.valid),
                     offered["identity"].eq(self.identify.valid),
                     offered["result"].eq(self.results.valid & self.requests.valid),
                     current.eq(self.requests.payload.generation == self.generation)]
        index = index_signal(max(len(p.identity), p.result_bytes) + 1)
        next_byte = self._next_byte(m, index, chosen)
        fsm = OneHotFSM(m, "transmit", initial="IDLE")          # (a binary state was 5 bits to decode)
        # The byte is on offer in these states: one flip-flop, not an OR of nine in front of the UART's register.
        offering = fsm.group("offering", _SENDING_STATES)
        summing = fsm.group("summing", _SUMMED_STATES)             # (the same for the bytes the CRC sums)
        with fsm.State("IDLE"):
            m.d.sync += [index.eq(0), *(chosen[kind].eq(0) for kind in kinds)]
            with m.If(offered["error"]):
                m.d.sync += chosen["error"].eq(1)
                fsm.next = "LOAD"
            with m.Elif(offered["ack"]):
                m.d.sync += chosen["ack"].eq(1)
                fsm.next = "LOAD"
            with m.Elif(offered["identity"]):
                m.d.sync += chosen["identity"].eq(1)
                fsm.next = "LOAD"
            with m.Elif(offered["result"]):
                m.d.sync += [chosen["result"].eq(current), chosen["dropped"].eq(~current)]
                fsm.next = "LOAD"
        with fsm.State("LOAD"):
            fsm.next = "SYNC"
            with m.If(chosen["error"]):
                m.d.sync += [out_type.eq(FrameKind.ERROR), out_seq.eq(self.errors.payload.seq), out_len.eq(1)]
            with m.If(chosen["ack"]):
                m.d.sync += [out_type.eq(FrameKind.LOADED), out_seq.eq(self.acks.payload), out_len.eq(0)]
            with m.If(chosen["identity"]):
                m.d.sync += [out_type.eq(FrameKind.IDENTITY), out_seq.eq(self.identify.payload),
                             out_len.eq(len(p.identity))]
            with m.If(chosen["result"]):
                m.d.sync += [out_type.eq(FrameKind.RESULT), out_seq.eq(self.requests.payload.seq),
                             out_len.eq(p.result_bytes)]
            with m.If(chosen["dropped"]):           # an earlier session's result: taken, not sent
                m.d.sync += taking["dropped"].eq(1)
                fsm.next = "RELEASE"
        m.d.comb += frame_crc.start.eq(fsm.ongoing("IDLE") | fsm.ongoing("LOAD"))   # (registered in FrameCRC)
        with fsm.State("RELEASE"):                    # `take` is set: the queue gives the answer up
            fsm.next = "SETTLE"
        with fsm.State("SETTLE"):                     # (a cycle for `offered` to see the queue after it)
            fsm.next = "IDLE"
        self._send_states(m, fsm, offering, summing, frame_crc,
                          [out_type, out_seq[:8], out_seq[8:], out_len[:8], out_len[8:]],
                          next_byte, out_len, index,
                          sent_all=[taking[kind].eq(chosen[kind]) for kind in kinds])
        return m

    def _send_states(self, m: Module, fsm: OneHotFSM, offering, summing, frame_crc: FrameCRC, header: list,
                     next_byte, out_len, index, sent_all: list) -> None:
        """SYNC, the CRC'd header bytes, the payload (``out_len`` bytes of ``next_byte``, each
        followed by three cycles, FETCH, WORD and BYTE, for the next one to be read), a cycle in SUM, then
        ``frame_crc``'s CRC, low byte first; ``sent_all`` (sync statements) as the last byte goes.
        ``offering``, ``summing``: the FSM's flip-flops of :data:`_SENDING_STATES` and :data:`_SUMMED_STATES`;
        the byte is offered while the CRC is not busy summing the last one, and picked by the sending
        state's flip-flop (:func:`_one_of`)."""
        sent = self.bytes.valid & self.bytes.ready
        crc = frame_crc.crc
        # The length's compares, registered: `out_len` is set in LOAD, five bytes before LEN1, and `index`
        # settles in FETCH, WORD and BYTE before each payload byte (the compares were a carry chain in front of
        # the state's next value).
        empty, last = Signal(), Signal()
        m.d.sync += [empty.eq(out_len == 0), last.eq(index == out_len - 1)]
        sending, summed = [], []                      # (state, byte); states whose byte goes into the CRC

        def send(state: str, value, following: str, crc_it: bool = True):
            sending.append((state, value))
            if crc_it:
                summed.append(state)
            with fsm.State(state):
                with m.If(sent):
                    fsm.next = following
                if state == "LEN1":
                    with m.If(sent & empty):
                        fsm.next = "SUM"
                if state == _CRC_STATES[-1]:
                    with m.If(sent):
                        m.d.sync += sent_all
                if state == "PAYLOAD":
                    with m.If(sent):
                        m.d.sync += index.eq(index + 1)
                        with m.If(last):
                            fsm.next = "SUM"

        send("SYNC", SYNC, "TYPE", crc_it=False)
        for state, value, following in zip(("TYPE", "SEQ0", "SEQ1", "LEN0", "LEN1"), header,
                                           ("SEQ0", "SEQ1", "LEN0", "LEN1", "PAYLOAD")):
            send(state, value, following)
        send("PAYLOAD", next_byte, "FETCH")
        with fsm.State("FETCH"):                      # `next_byte` reads the byte at the new index
            fsm.next = "WORD"
        with fsm.State("WORD"):
            fsm.next = "BYTE"
        with fsm.State("BYTE"):
            fsm.next = "PAYLOAD"
        with fsm.State("SUM"):
            fsm.next = "CRC0"
        for k, state in enumerate(_CRC_STATES):
            send(state, crc.word_select(k, 8), _CRC_STATES[k + 1] if k + 1 < CRC_BYTES else "RELEASE", crc_it=False)
        assert tuple(state for state, _ in sending) == _SENDING_STATES and tuple(summed) == _SUMMED_STATES
        states = Cat(fsm.ongoing(state) for state, _ in sending)
        m.d.comb += [self.bytes.valid.eq(offering & ~frame_crc.busy),
                     self.bytes.payload.eq(_one_of(states, [Value.cast(value)[:8] if not isinstance(value, int)
                                                            else Const(value, 8) for _, value in sending]))]
        m.d.comb += frame_crc.take.eq(sent & summing)


#: The transmitter's states that offer a byte, in the frame's order.
_SENDING_STATES = ("SYNC", "TYPE", "SEQ0", "SEQ1", "LEN0", "LEN1", "PAYLOAD", *_CRC_STATES)
#: Those whose byte the CRC sums.
_SUMMED_STATES = ("TYPE", "SEQ0", "SEQ1", "LEN0", "LEN1", "PAYLOAD")


def _words(data: list) -> list:
    """Bytes (8-bit values) -> 32-bit words of four, little-endian, the last padded with zeros."""
    padded = [*data, *[Const(0, 8)] * (-len(data) % 4)]
    return [Cat(*padded[k:k + 4]) for k in range(0, len(padded), 4)]


def _one_of(one_hot: Value, values: list) -> Value:
    """The value whose bit is set in ``one_hot`` (zero if none): an OR of ANDs, no decoder (for a few
    values: each costs a LUT input per bit)."""
    picked = Const(0, len(values[0]))
    for k, value in enumerate(values):
        picked = picked | (value & one_hot[k].replicate(len(value)))
    return picked


def _fifo(width: int, depth: int) -> wiring.Component:
    """A FIFO of exactly ``depth`` entries. Amaranth's SyncFIFOBuffered of depth 2 keeps a one-entry
    inner FIFO whose address is zero bits wide, which Verilator refuses (``[-1:0]``): depth 2 (a
    window of 2) takes the unbuffered SyncFIFO instead."""
    if depth == 2:
        return fifo.SyncFIFO(width=width, depth=depth)
    return fifo.SyncFIFOBuffered(width=width, depth=depth)


class BoardTop(wiring.Component):
    """UART pins in and out; everything else inside."""

    def __init__(self, params: BoardParams):
        self.params = params
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.uart_rx = uart_rx = UARTReceiver(p.divisor)
        m.submodules.uart_tx = uart_tx = UARTTransmitter(p.divisor)
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFOBuffered(width=8, depth=32)
        m.submodules.in_flight = in_flight = _fifo(InFlight.size, p.window)
        # Two refusals queue (and one waits in the receiver's register); the receiver waits for room.
        m.submodules.errors = errors = _fifo(ErrorReport.size, 2)
        m.submodules.acks = acks = fifo.SyncFIFOBuffered(width=16, depth=3)                   # LOADs done
        m.submodules.receiver = receiver = FrameReceiver(p)
        m.submodules.loader = loader = ImageLoader(p)
        m.submodules.core = core = SpikingCore(p.plan)
        m.submodules.transmitter = transmitter = FrameTransmitter(p)

        wiring.connect(m, uart_rx.data, rx_fifo.w_stream)
        m.submodules.rx_register = rx_register = SlowStreamRegister(8)
        wiring.connect(m, rx_fifo.r_stream, rx_register.inlet)
        wiring.connect(m, rx_register.outlet, receiver.bytes)
        wiring.connect(m, receiver.image, loader.receive)
        wiring.connect(m, loader.images, core.images)
        wiring.connect(m, receiver.requests, in_flight.w_stream)
        # Refusals leave the receiver from a register; acknowledgements go straight into their FIFO (a skid
        # buffer on both took ~130 logic cells a board with run-time weights no longer had on the iCE40UP5K).
        wiring.connect(m, receiver.errors, errors.w_stream)
        wiring.connect(m, receiver.acks, acks.w_stream)
        wiring.connect(m, receiver.identify, transmitter.identify)
        m.d.comb += transmitter.generation.eq(receiver.generation)
        m.d.comb += receiver.in_flight.eq(in_flight.r_rdy)
        if p.load_bytes:
            m.submodules.weights = weights = WeightLoader(p)
            wiring.connect(m, receiver.weights, weights.requests)
            m.d.comb += core.weights_load.eq(weights.core)
        wiring.connect(m, errors.r_stream, transmitter.errors)
        wiring.connect(m, acks.r_stream, transmitter.acks)
        wiring.connect(m, core.results, transmitter.results)
        wiring.connect(m, in_flight.r_stream, transmitter.requests)
        # The sent bytes pass a register too: the UART's ready fed the transmitter's state and CRC, and
        # its valid the UART's counters, in one path (it set the iCE40's clock).
        m.submodules.tx_register = tx_register = SlowStreamRegister(8)
        wiring.connect(m, transmitter.bytes, tx_register.inlet)
        wiring.connect(m, tx_register.outlet, uart_tx.data)
        return m
