"""Board-level parameters: the UART divisor, the window and the identity a board reports.

The identity (docs/protocol.md, IDENTITY) carries the network's fingerprint and the core's
parameters, so the host driver can refuse a board that runs another network.
"""

from __future__ import annotations

from ..errors import SpikesmithError
from ..contract.protocol import MAX_FRAME_PAYLOAD, MAX_LOAD_ROWS, Identity, code_bytes, logit_bytes
from ..contract.network import SpikingNetwork
from ..contract.plan import BoardParams, CorePlan
from .sizing import plan_core

__all__ = ["board_params", "plan_for_identity", "uart_divisor", "load_rows", "DEFAULT_WINDOW", "LOAD_BUFFER_BITS"]

#: Images a board takes in flight (the host driver never sends more): as many as it can hold without
#: its receiver waiting, the image buffer and the core's two input banks. With 4, a core slower than
#: the line (MNIST on the iCEBreaker at 3 Mbaud) left the fourth image in the UART's 32-byte FIFO,
#: which overflowed: bytes were lost and the images resent after a timeout (bench/endtoend.py).
DEFAULT_WINDOW = 3


#: The board's LOAD buffer holds this many bits of weight rows: one iCE40 block RAM (256 x 16).
LOAD_BUFFER_BITS = 4096


def load_rows(load_bytes: int) -> int:
    """Most weight rows one LOAD carries (docs/protocol.md): what fills the LOAD buffer, at most 255
    (the count byte); 0 when no weights are loaded at run time. 2-byte rows: 255 rows, 522-byte frames."""
    if not load_bytes:
        return 0
    return max(1, min(MAX_LOAD_ROWS, LOAD_BUFFER_BITS // (8 * load_bytes)))


#: The UART's bit period must be within this share of the baud rate's.
BAUD_TOLERANCE = 0.02


def uart_divisor(clock_hz: float, baud: int) -> int:
    """Clock cycles per UART bit at ``clock_hz`` for ``baud``; refuses fewer than 4 or more than 2 % off."""
    divisor = round(clock_hz / baud)
    if divisor < 4:
        raise SpikesmithError(f"{baud} baud is too fast for a {clock_hz / 1e6:g} MHz clock "
                              f"(the UART needs at least 4 clock cycles per bit)")
    if abs(clock_hz / divisor - baud) / baud > BAUD_TOLERANCE:
        raise SpikesmithError(f"{baud} baud is more than 2% off any divisor of {clock_hz / 1e6:g} MHz "
                              f"({clock_hz / divisor:,.0f} baud at {divisor} cycles per bit)")
    return divisor


def board_params(plan: CorePlan, clock_hz: int, baud: int, window: int = DEFAULT_WINDOW) -> BoardParams:
    image_bytes = plan.input.size * code_bytes(plan.timesteps)
    if image_bytes > MAX_FRAME_PAYLOAD:
        raise SpikesmithError(f"an image of {plan.input.size:,} inputs is {image_bytes:,} bytes on the wire; a frame "
                              f"carries at most {MAX_FRAME_PAYLOAD:,} (docs/protocol.md), so no board top is built")
    divisor = uart_divisor(clock_hz, baud)
    identity = Identity(plan.timesteps, plan.input.size, plan.classes, logit_bytes(plan.logit_width), window,
                        int(clock_hz), plan.initiation_interval, bytes.fromhex(plan.fingerprint.split(":")[1]),
                        plan.lane_counts,
                        plan.loaded_flags, plan.load_bytes, load_rows(plan.load_bytes))
    return BoardParams(plan, identity.encode(), divisor, window, code_bytes(plan.timesteps),
                       logit_bytes(plan.logit_width), plan.load_bytes, load_rows(plan.load_bytes))


def plan_for_identity(net: SpikingNetwork, identity: Identity) -> CorePlan:
    """The core plan of a board that reports ``identity`` and runs ``net``: the same lanes and
    run-time weight layers, so the host packs weight rows as the board's core reads them."""
    if len(identity.lanes) != len(net.layers):
        raise SpikesmithError(f"the board has {len(identity.lanes)} layers, the network {len(net.layers)}")
    loaded = [index for index, flag in enumerate(identity.loaded) if flag]
    return plan_core(net, lanes=list(identity.lanes), loaded_weights=loaded)
