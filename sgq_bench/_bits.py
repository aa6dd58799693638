"""Declared bits: the one value the method label, the result rows and the efficiency metrics read.

Why its own module: ``results`` (torch-free) prints the same label as ``Method.label`` and the
quantizer's declaration (``sgq_bench._base.Quantizer.declared_bits``), so the value and its printed
form sit below both, with no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bits:
    """Weight and activation bits, 32 meaning float: a quantizer's declaration, or one layer's.

    Why a value and not a tuple: the method label, the result rows and the efficiency metrics all read
    this one declaration, so they cannot disagree, and ``label`` is the one printed form (``W4A2``).
    """

    weight: int = 32
    act: int = 32

    def __post_init__(self) -> None:
        for side in ("weight", "act"):
            value = getattr(self, side)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
                raise ValueError(f"Bits.{side} must be an int in [1, 32], not {value!r}")

    @property
    def is_float(self) -> bool:
        return self.weight == 32 and self.act == 32

    @property
    def label(self) -> str:
        """``fp32`` when float, else ``W<weight>A<act>``."""
        return "fp32" if self.is_float else f"W{self.weight}A{self.act}"


FLOAT = Bits()


def method_label(name: str, bits: Bits) -> str:
    """A method's display name: ``pact W4A2``; the bare name when float or already named by its bits."""
    if bits.is_float or name.lower().endswith(bits.label.lower()):
        return name
    return f"{name} {bits.label}"


__all__ = ["FLOAT", "Bits", "method_label"]
