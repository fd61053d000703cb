"""How a result that disagrees with the golden model is reported (every simulator engine says it the same way)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["describe_mismatch"]


def describe_mismatch(image: int, label: int, logits: Sequence[int], want_label: int,
                      want_logits: Sequence[int]) -> str | None:
    """None if the result equals the golden one, else a line naming the image, the first differing logit
    and both values (then both labels)."""
    logits, want_logits = [int(v) for v in logits], [int(v) for v in want_logits]
    if int(label) == int(want_label) and logits == want_logits:
        return None
    k = next((k for k, (a, b) in enumerate(zip(logits, want_logits)) if a != b), None)
    where = (f"output layer logit {k} is {logits[k]} but the golden model says {want_logits[k]}"
             if k is not None else "logits agree")
    return f"image {image}: {where}; label {label}, golden {want_label}"
