"""The board top: the spiking core behind a UART and the frame protocol of docs/protocol.md.

    rx -> UARTReceiver -> byte FIFO -> FrameReceiver -> image buffer -> loader -> SpikingCore
    tx <- UARTTransmitter <- FrameTransmitter <- results (+ their sequence numbers), identity, errors

A request is checked whole (type, length, CRC) before its image reaches the core, so a
damaged request never computes; the board answers it with an ERROR frame and hunts for the
next sync byte. At most ``window`` images are in flight (received, result not yet sent);
one more gets ERROR BUSY. The identity ROM holds the network's fingerprint and the core's
parameters, so the host driver refuses a board that runs another network.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Array, Cat, Const, Module, Signal
from amaranth.lib import fifo, memory, wiring
from amaranth.lib.wiring import In, Out

from ..gen.sizing import CorePlan
from ..host.protocol import COMMIT_LAYER, SYNC, ErrorCode, FrameType
from .core import SpikingCore
from .events import index_signal
from .uart import UARTReceiver, UARTTransmitter, crc16_update

__all__ = ["BoardTop", "BoardParams"]

# The numbers of docs/protocol.md, from the host side's definitions (one source for both ends).
IDENTIFY, INFER, LOAD, IDENTITY, RESULT, LOADED, ERROR = (int(t) for t in (
    FrameType.IDENTIFY, FrameType.INFER, FrameType.LOAD, FrameType.IDENTITY, FrameType.RESULT, FrameType.LOADED,
    FrameType.ERROR))
ERROR_CRC, ERROR_LENGTH, ERROR_TYPE, ERROR_BUSY, ERROR_NOT_LOADED = (int(c) for c in (
    ErrorCode.CRC, ErrorCode.LENGTH, ErrorCode.TYPE, ErrorCode.BUSY, ErrorCode.NOT_LOADED))


@dataclass(frozen=True, eq=False)
class BoardParams:
    """What the board top needs besides the core plan (made by ``spikesmith.gen.board``).

    ``code_bytes`` and ``logit_bytes`` are the wire sizes of docs/protocol.md.
    """
    plan: CorePlan
    identity: bytes
    divisor: int          # clock cycles per UART bit
    window: int           # images in flight
    code_bytes: int
    logit_bytes: int
    load_bytes: int = 0   # bytes of a LOAD's row field; 0: every weight is in the bitstream

    @property
    def load_payload_bytes(self) -> int:
        """Length of a LOAD payload: layer (1), row address (2), row (``load_bytes``)."""
        return 3 + self.load_bytes

    @property
    def image_bytes(self) -> int:
        return self.plan.input.size * self.code_bytes

    @property
    def result_bytes(self) -> int:
        return 2 + self.plan.classes * self.logit_bytes


class BoardTop(wiring.Component):
    """UART pins in and out; everything else inside."""

    def __init__(self, params: BoardParams):
        self.params = params
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        p, plan = self.params, self.params.plan
        T, lanes, words = plan.timesteps, plan.input.lanes, plan.input.words

        m.submodules.uart_rx = uart_rx = UARTReceiver(p.divisor)
        m.submodules.uart_tx = uart_tx = UARTTransmitter(p.divisor)
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFOBuffered(width=8, depth=32)
        m.d.comb += [rx_fifo.w_data.eq(uart_rx.data.payload), rx_fifo.w_en.eq(uart_rx.data.valid),
                     uart_rx.data.ready.eq(rx_fifo.w_rdy)]
        m.submodules.core = core = SpikingCore(plan)
        m.submodules.seqs = seqs = fifo.SyncFIFOBuffered(width=16, depth=p.window)     # images in flight
        m.submodules.errors = errors = fifo.SyncFIFOBuffered(width=24, depth=4)        # {seq, code}
        m.submodules.acks = acks = fifo.SyncFIFOBuffered(width=16, depth=3)            # LOADs done
        loads = p.load_bytes > 0
        loaded = Signal(init=int(not loads))          # every run-time weight row written and committed
        load_frame = Signal(8 * p.load_payload_bytes)

        # ---------------------------------------------------------------- receive and check a frame
        m.submodules.image = image = memory.Memory(shape=lanes * T, depth=max(2, words), init=[])
        image_write, image_read = image.write_port(), image.read_port()
        crc, seq, kind, length = Signal(16), Signal(16), Signal(8), Signal(16)
        received_crc = Signal(8)
        count = index_signal(max(p.image_bytes, p.load_payload_bytes) + 1)
        beat = Signal(lanes * T)
        lane, word = index_signal(lanes), index_signal(words)
        shift = index_signal(lanes * T)               # lane * T, kept by adding T (no multiplier)
        low_byte = Signal(8)                         # first byte of a two-byte code
        loader_busy = Signal()
        identify_pending, identify_seq = Signal(), Signal(16)
        byte = rx_fifo.r_data
        crc_next = crc16_update(m, crc, byte, "rx_crc")
        take = Signal()
        m.d.comb += rx_fifo.r_en.eq(take)

        def refuse(code):
            m.d.comb += [errors.w_en.eq(1), errors.w_data.eq(Cat(seq, Const(code, 8)))]

        with m.FSM(name="receive"):
            with m.State("HUNT"):
                m.d.comb += take.eq(rx_fifo.r_rdy)
                with m.If(rx_fifo.r_rdy & (byte == SYNC)):
                    m.d.sync += crc.eq(0xFFFF)
                    m.next = "TYPE"
            for state, target, nxt in (("TYPE", kind, "SEQ0"), ("SEQ0", seq[:8], "SEQ1"), ("SEQ1", seq[8:], "LEN0"),
                                       ("LEN0", length[:8], "LEN1")):
                with m.State(state):
                    m.d.comb += take.eq(rx_fifo.r_rdy)
                    with m.If(rx_fifo.r_rdy):
                        m.d.sync += [target.eq(byte), crc.eq(crc_next)]
                        m.next = nxt
            with m.State("LEN1"):
                m.d.comb += take.eq(rx_fifo.r_rdy & errors.w_rdy)     # room for a refusal: none is dropped
                with m.If(take):
                    m.d.sync += [length[8:].eq(byte), crc.eq(crc_next), count.eq(0),
                                 lane.eq(0), word.eq(0), beat.eq(0), shift.eq(0)]
                    full_length = Cat(length[:8], byte)
                    with m.If((kind == IDENTIFY) & (full_length == 0)):
                        m.next = "CRC0"
                    with m.Elif((kind == INFER) & (full_length == p.image_bytes)):
                        m.next = "PAYLOAD"
                    with m.Elif((kind == LOAD) & (full_length == p.load_payload_bytes) & loads):
                        m.next = "LOAD"
                    with m.Elif((kind == IDENTIFY) | (kind == INFER) | ((kind == LOAD) & loads)):
                        refuse(ERROR_LENGTH)
                        m.next = "HUNT"
                    with m.Else():
                        refuse(ERROR_TYPE)
                        m.next = "HUNT"
            with m.State("PAYLOAD"):
                # The image buffer is free only once the previous image went into the core.
                m.d.comb += take.eq(rx_fifo.r_rdy & ~loader_busy)
                with m.If(take):
                    m.d.sync += [crc.eq(crc_next), count.eq(count + 1)]
                    if p.code_bytes == 2:
                        code_done = count[0]
                        code = Cat(low_byte, byte)[:T]
                        with m.If(~count[0]):
                            m.d.sync += low_byte.eq(byte)
                    else:
                        code_done = Const(1)
                        code = byte[:T]
                    with m.If(code_done):
                        # Place the code in its lane; write the beat when full or at the image's end.
                        placed = Signal(lanes * T)
                        m.d.comb += placed.eq(beat | (code << shift))
                        last_code = count == p.image_bytes - 1
                        with m.If((lane == lanes - 1) | last_code):
                            m.d.comb += [image_write.en.eq(1), image_write.addr.eq(word), image_write.data.eq(placed)]
                            m.d.sync += [beat.eq(0), lane.eq(0), shift.eq(0), word.eq(word + 1)]
                        with m.Else():
                            m.d.sync += [beat.eq(placed), lane.eq(lane + 1), shift.eq(shift + T)]
                    with m.If(count == p.image_bytes - 1):
                        m.next = "CRC0"
            with m.State("LOAD"):
                # Shift the payload in from the top: its first byte ends in the LSBs.
                m.d.comb += take.eq(rx_fifo.r_rdy)
                with m.If(take):
                    m.d.sync += [crc.eq(crc_next), count.eq(count + 1),
                                 load_frame.eq(Cat(load_frame[8:], byte))]
                    with m.If(count == p.load_payload_bytes - 1):
                        m.next = "CRC0"
            with m.State("CRC0"):
                m.d.comb += take.eq(rx_fifo.r_rdy)
                with m.If(rx_fifo.r_rdy):
                    m.d.sync += received_crc.eq(byte)
                    m.next = "CRC1"
            with m.State("CRC1"):
                # Wait for room for any answer, so no request is ever silently dropped.
                ready = rx_fifo.r_rdy & errors.w_rdy & acks.w_rdy & ~identify_pending & ~loader_busy
                m.d.comb += take.eq(ready)
                with m.If(ready):
                    with m.If(Cat(received_crc, byte) != crc):
                        refuse(ERROR_CRC)
                    with m.Elif(kind == IDENTIFY):
                        m.d.sync += [identify_pending.eq(1), identify_seq.eq(seq)]
                    if loads:                                   # (LEN1 refuses a LOAD otherwise)
                        with m.Elif(kind == LOAD):
                            target = load_frame[:8]
                            known = target == COMMIT_LAYER
                            for layer in plan.loaded_layers:
                                known |= target == layer.index
                            with m.If(seqs.r_rdy):              # images in flight: the core is busy
                                refuse(ERROR_BUSY)
                            with m.Elif(~known):
                                refuse(ERROR_LENGTH)
                            with m.Else():
                                self._load_row(m, core, load_frame, loaded)
                                m.d.comb += [acks.w_en.eq(1), acks.w_data.eq(seq)]
                    with m.Elif(~loaded):
                        refuse(ERROR_NOT_LOADED)
                    with m.Elif(~seqs.w_rdy):
                        refuse(ERROR_BUSY)
                    with m.Else():
                        m.d.comb += [seqs.w_en.eq(1), seqs.w_data.eq(seq)]
                        m.d.sync += loader_busy.eq(1)
                    m.next = "HUNT"

        # ---------------------------------------------------------------- load the checked image into the core
        load_word = index_signal(words + 1)
        loading = Signal()
        m.d.comb += [image_read.addr.eq(load_word), core.images.payload.eq(image_read.data)]
        with m.If(loader_busy & ~loading):            # one cycle to read word 0
            m.d.sync += [loading.eq(1), load_word.eq(0)]
            m.d.comb += image_read.addr.eq(0)
        with m.If(loading):
            m.d.comb += core.images.valid.eq(1)
            with m.If(core.images.ready):
                m.d.comb += image_read.addr.eq(load_word + 1)
                m.d.sync += load_word.eq(load_word + 1)
                with m.If(load_word == words - 1):
                    m.d.sync += [loading.eq(0), loader_busy.eq(0)]
            with m.Else():
                m.d.comb += image_read.addr.eq(load_word)

        # ---------------------------------------------------------------- answer: errors, identity, results
        result_payload = Signal(8 * p.result_bytes)
        identity_bytes = [Const(b, 8) for b in p.identity]
        label = core.results.payload.label
        logits = core.results.payload.logits
        width = plan.logit_width
        packed = Cat(label, Const(0, 16 - plan.label_width),
                     *[Cat(logits[k], logits[k][width - 1].replicate(8 * p.logit_bytes - width))
                       for k in range(plan.classes)])
        out_type, out_seq, out_len = Signal(8), Signal(16), Signal(16)
        out_code = Signal(8)
        index = index_signal(max(len(p.identity), p.result_bytes) + 1)
        tx_crc = Signal(16)
        data = uart_tx.data
        sent = data.valid & data.ready
        tx_crc_next = crc16_update(m, tx_crc, data.payload, "tx_crc")

        payload_byte = Signal(8)
        with m.Switch(out_type):
            with m.Case(IDENTITY):
                m.d.comb += payload_byte.eq(Array(identity_bytes)[index])
            with m.Case(RESULT):
                m.d.comb += payload_byte.eq(result_payload.word_select(index, 8))
            with m.Default():
                m.d.comb += payload_byte.eq(out_code)

        def send(value, nxt, crc_it=True):
            m.d.comb += [data.valid.eq(1), data.payload.eq(value)]
            with m.If(sent):
                if crc_it:
                    m.d.sync += tx_crc.eq(tx_crc_next)
                m.next = nxt

        with m.FSM(name="transmit"):
            with m.State("IDLE"):
                m.d.sync += [tx_crc.eq(0xFFFF), index.eq(0)]
                with m.If(errors.r_rdy):
                    m.d.comb += errors.r_en.eq(1)
                    m.d.sync += [out_type.eq(ERROR), out_seq.eq(errors.r_data[:16]), out_code.eq(errors.r_data[16:]),
                                 out_len.eq(1)]
                    m.next = "SYNC"
                with m.Elif(acks.r_rdy):
                    m.d.comb += acks.r_en.eq(1)
                    m.d.sync += [out_type.eq(LOADED), out_seq.eq(acks.r_data), out_len.eq(0)]
                    m.next = "SYNC"
                with m.Elif(identify_pending):
                    m.d.sync += [out_type.eq(IDENTITY), out_seq.eq(identify_seq), out_len.eq(len(p.identity)),
                                 identify_pending.eq(0)]
                    m.next = "SYNC"
                with m.Elif(core.results.valid & seqs.r_rdy):
                    m.d.comb += [core.results.ready.eq(1), seqs.r_en.eq(1)]
                    m.d.sync += [out_type.eq(RESULT), out_seq.eq(seqs.r_data), out_len.eq(p.result_bytes),
                                 result_payload.eq(packed)]
                    m.next = "SYNC"
            with m.State("SYNC"):
                send(SYNC, "TYPE", crc_it=False)
            with m.State("TYPE"):
                send(out_type, "SEQ0")
            with m.State("SEQ0"):
                send(out_seq[:8], "SEQ1")
            with m.State("SEQ1"):
                send(out_seq[8:], "LEN0")
            with m.State("LEN0"):
                send(out_len[:8], "LEN1")
            with m.State("LEN1"):
                send(out_len[8:], "PAYLOAD")
                with m.If(sent & (out_len == 0)):
                    m.next = "CRC0"
            with m.State("PAYLOAD"):
                send(payload_byte, "PAYLOAD")
                with m.If(sent):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == out_len - 1):
                        m.next = "CRC0"
            with m.State("CRC0"):
                send(tx_crc[:8], "CRC1", crc_it=False)
            with m.State("CRC1"):
                send(tx_crc[8:], "IDLE", crc_it=False)
        return m

    def _load_row(self, m: Module, core, frame, loaded) -> None:
        """A checked LOAD: write its row into the core (one cycle), or commit the load."""
        plan = self.params.plan
        layer, address, row = frame[:8], frame[8:24], frame[24:]
        with m.If(layer == COMMIT_LAYER):
            m.d.sync += loaded.eq(1)
        with m.Else():
            m.d.sync += loaded.eq(0)
            m.d.comb += [core.weights_load.en.eq(1), core.weights_load.layer.eq(layer),
                         core.weights_load.addr.eq(address[:plan.load_addr_width]),
                         core.weights_load.data.eq(row[:plan.load_data_width])]
