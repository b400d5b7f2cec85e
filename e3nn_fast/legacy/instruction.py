"""``Instruction``: one path of the legacy instruction-based tensor product, as the user wrote it.

An instruction names segments of the two inputs and of the output, a connection mode and whether the path carries
learned weights.  ``path_weight`` is the user's extra factor before normalisation and the folded normalisation
constant after it (see :mod:`e3nn_fast.legacy.path_weights`); ``weight_std`` is the standard deviation the learned
weights of the path should be initialised with (``None`` until normalised, and for unweighted paths).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from e3nn_fast.path_description import CONNECTION_MODES, weight_shape

# How many products of input channels one output channel sums over (its fan-in), per connection mode.  The weights
# of the triangular mode "u<vw" sum over all pairs u < v; "uvu<v", "uvuv", "uuu" write one product per channel.
_FAN_IN = {
    "uvw": lambda m1, m2: m1 * m2,
    "uvu": lambda m1, m2: m2,
    "uvv": lambda m1, m2: m1,
    "uuw": lambda m1, m2: m1,
    "uuu": lambda m1, m2: 1,
    "uvuv": lambda m1, m2: 1,
    "uvu<v": lambda m1, m2: 1,
    "u<vw": lambda m1, m2: m1 * (m2 - 1) // 2,
}

# What ``repr`` shows: a label and the field(s) whose values it joins.
_REPR_ITEMS = (
    ("i", ("i_in1", "i_in2", "i_out")),
    ("mode", ("connection_mode",)),
    ("has_weight", ("has_weight",)),
    ("path_weight", ("path_weight",)),
    ("weight_std", ("weight_std",)),
    ("mul", ("first_input_multiplicity", "second_input_multiplicity", "output_multiplicity")),
    ("path_shape", ("path_shape",)),
    ("num_elements", ("num_elements",)),
)


@dataclasses.dataclass(frozen=True)
class Instruction:
    """A path ``i_in1 x i_in2 -> i_out`` of a :class:`~e3nn_fast.legacy.FunctionalTensorProduct`.

    ``path_shape`` (the shape the path's weights have, or would have) and ``num_elements`` (how many input products
    each output component sums over) are derived from the mode and the three multiplicities.
    """

    i_in1: int
    i_in2: int
    i_out: int
    connection_mode: str
    has_weight: bool
    path_weight: float
    weight_std: Optional[float]
    first_input_multiplicity: int
    second_input_multiplicity: int
    output_multiplicity: int
    path_shape: Tuple[int, ...] = dataclasses.field(init=False)
    num_elements: int = dataclasses.field(init=False)

    def __post_init__(self):
        if self.connection_mode not in CONNECTION_MODES:
            raise ValueError(
                f"Unsupported connection_mode {self.connection_mode!r} for instruction; "
                f"expected one of {list(CONNECTION_MODES)}"
            )
        m1, m2, mo = self.first_input_multiplicity, self.second_input_multiplicity, self.output_multiplicity
        object.__setattr__(self, "path_shape", weight_shape(self.connection_mode, m1, m2, mo))
        object.__setattr__(self, "num_elements", _FAN_IN[self.connection_mode](m1, m2))

    def replace(self, **changes) -> "Instruction":
        """A copy with some fields changed (derived fields are recomputed)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        # e3nn-jax 0.21's layout: ``label=value`` items, grouped values joined by commas
        items = ", ".join(
            f"{label}={','.join(str(getattr(self, name)) for name in names)}" for label, names in _REPR_ITEMS
        )
        return f"Instruction({items})"
