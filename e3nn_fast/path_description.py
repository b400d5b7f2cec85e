"""Path descriptions: the one statement of a tensor product's maths that every executor consumes.

A tensor product between two inputs laid out in e3nn's layout (irreps concatenated on the last axis, each segment
``mul x ir`` stored multiplicity-major as ``(mul, 2l+1)``) is a sum of *paths*.  A path takes segment ``in1`` of the
first input, segment ``in2`` of the second, couples them with the Clebsch-Gordan block ``C[l1, l2, l_out]`` (unit
Frobenius norm, :func:`e3nn_fast.so3.clebsch_gordan`), scales by a constant ``coefficient`` (all normalisations
folded in), optionally multiplies by learned weights, and adds into segment ``out`` of the output.  How the three
multiplicity indices connect is the path's *connection mode*, e.g. ``"uvw"`` (fully connected), ``"uvu"``
(channelwise), ``"uuu"`` (elementwise) or ``"uvuv"`` (full outer product), written as einsum subscripts below.

A :class:`TensorProductDescription` is built once per configuration (the constructors here are cached) and then read
by the reference executor (:mod:`e3nn_fast.reference.tensor_product`), the optimised jnp executor and the Pallas
kernels alike, so that normalisation, ordering and CG conventions are decided in exactly one place.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import numpy as np

from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.so3 import clebsch_gordan

# Connection mode -> einsum subscripts for the multiplicity indices of (input 1, input 2, output, weights).
# "q" enumerates the pairs u < v of the triangular modes, in the order of ``itertools.combinations``.
CONNECTION_MODES: dict[str, tuple[str, str, str, str]] = {
    "uvw": ("u", "v", "w", "uvw"),
    "uvu": ("u", "v", "u", "uv"),
    "uvv": ("u", "v", "v", "uv"),
    "uuw": ("u", "u", "w", "uw"),
    "uuu": ("u", "u", "u", "u"),
    "uvuv": ("u", "v", "uv", "uv"),
    "uvu<v": ("u", "v", "q", "q"),
    "u<vw": ("u", "v", "w", "qw"),
}
TRIANGULAR_MODES = ("uvu<v", "u<vw")
IRREP_NORMALIZATIONS = ("component", "norm", "none")


def irrep_normalization_factor(normalization: str, ir1: Irrep, ir2: Irrep, ir_out: Irrep) -> float:
    """Squared scale of a unit-norm CG block: ``component`` keeps components O(1), ``norm`` keeps norms O(1)."""
    if normalization == "component":
        return float(ir_out.dim)
    if normalization == "norm":
        return float(ir1.dim * ir2.dim)
    if normalization == "none":
        return 1.0
    raise ValueError(f"irrep_normalization={normalization!r} is not one of {IRREP_NORMALIZATIONS}")


def weight_shape(mode: str, mul1: int, mul2: int, mul_out: int) -> tuple[int, ...]:
    """Shape of the learned weights of a path in connection mode ``mode``."""
    pairs = mul1 * (mul2 - 1) // 2
    sizes = {"u": mul1, "v": mul2, "w": mul_out, "q": pairs}
    return tuple(sizes[index] for index in CONNECTION_MODES[mode][3])


def output_multiplicity(mode: str, mul1: int, mul2: int, mul_out: int) -> int:
    """The output multiplicity a path in ``mode`` requires (``mul_out`` itself for modes with a free ``w``)."""
    return {
        "uvw": mul_out,
        "uvu": mul1,
        "uvv": mul2,
        "uuw": mul_out,
        "uuu": mul1,
        "uvuv": mul1 * mul2,
        "uvu<v": mul1 * (mul1 - 1) // 2,
        "u<vw": mul_out,
    }[mode]


@dataclasses.dataclass(frozen=True)
class Path:
    """One coupling ``in1 x in2 -> out`` between segments of the two inputs and the output."""

    in1: int
    in2: int
    out: int
    mode: str
    coefficient: float
    has_weight: bool
    ir1: Irrep
    ir2: Irrep
    ir_out: Irrep
    mul1: int
    mul2: int
    mul_out: int

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of this path's weights (``()`` when it has none)."""
        return weight_shape(self.mode, self.mul1, self.mul2, self.mul_out) if self.has_weight else ()

    @property
    def num_weights(self) -> int:
        return math.prod(self.weight_shape) if self.has_weight else 0

    def cg(self) -> np.ndarray:
        """The unit-norm Clebsch-Gordan block ``(2 l1 + 1, 2 l2 + 1, 2 l_out + 1)`` (float64, cached)."""
        return clebsch_gordan(self.ir1.l, self.ir2.l, self.ir_out.l)

    def sparse_cg(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Non-zero entries ``(i, j, k, value)`` of the CG block, with the path coefficient folded in."""
        return _sparse_entries(self.ir1.l, self.ir2.l, self.ir_out.l, self.coefficient)


@functools.lru_cache(maxsize=None)
def _sparse_entries(l1: int, l2: int, l3: int, coefficient: float):
    block = clebsch_gordan(l1, l2, l3)
    i, j, k = np.nonzero(np.abs(block) > 1e-12)
    return i, j, k, block[i, j, k] * coefficient


@dataclasses.dataclass(frozen=True)
class TensorProductDescription:
    """All paths of a tensor product between ``irreps_in1`` and ``irreps_in2`` into ``irreps_out``."""

    irreps_in1: Irreps
    irreps_in2: Irreps
    irreps_out: Irreps
    paths: tuple[Path, ...]

    def __post_init__(self):
        for path in self.paths:
            _check_path(self, path)

    @property
    def weighted_paths(self) -> tuple[Path, ...]:
        return tuple(path for path in self.paths if path.has_weight)

    @property
    def num_weights(self) -> int:
        return sum(path.num_weights for path in self.paths)

    @property
    def output_mask(self) -> np.ndarray:
        """Boolean mask of the output components that some path with non-zero coefficient writes to."""
        written = {p.out for p in self.paths if p.coefficient != 0 and p.mul1 * p.mul2 * p.mul_out > 0}
        return np.concatenate(
            [np.full(mul_ir.dim, i in written, dtype=bool) for i, mul_ir in enumerate(self.irreps_out)]
            + [np.zeros(0, dtype=bool)]
        )

    def flops_per_sample(self) -> int:
        """Multiply-adds of one sample counted from the sparse CG blocks (2 FLOPs each), for benchmarks."""
        total = 0
        for path in self.paths:
            nnz = len(path.sparse_cg()[0])
            sizes = {"u": path.mul1, "v": path.mul2, "w": path.mul_out, "q": path.mul1 * (path.mul2 - 1) // 2}
            a, b, c, _ = CONNECTION_MODES[path.mode]
            indices = set(a) | set(b) | set(c) | (set(CONNECTION_MODES[path.mode][3]) if path.has_weight else set())
            if path.mode in TRIANGULAR_MODES:
                indices = (indices - {"u", "v"}) | {"q"}
            total += 2 * nnz * math.prod(sizes[i] for i in indices)
        return total


def _check_path(description: TensorProductDescription, path: Path) -> None:
    """Reject paths that do not respect the selection rules or the multiplicities of their mode."""
    if path.mode not in CONNECTION_MODES:
        raise ValueError(f"Unknown connection mode {path.mode!r}; expected one of {list(CONNECTION_MODES)}")
    if path.ir_out not in list(path.ir1 * path.ir2):
        raise ValueError(f"Path {path.ir1} x {path.ir2} -> {path.ir_out} violates the selection rules")
    expected = output_multiplicity(path.mode, path.mul1, path.mul2, path.mul_out)
    if path.mode in ("uuw", "uuu", "uvu<v", "u<vw") and path.mul1 != path.mul2:
        raise ValueError(f"Mode {path.mode!r} needs equal input multiplicities, got {path.mul1} and {path.mul2}")
    if path.mode == "uuw" and not path.has_weight and path.mul_out != 1:
        raise ValueError("Mode 'uuw' without weights sums over u and needs an output multiplicity of 1")
    if path.mode in ("uvw", "u<vw") and not path.has_weight:
        raise ValueError(f"Mode {path.mode!r} needs weights")
    if path.mode not in ("uvw", "uuw", "u<vw") and path.mul_out != expected:
        raise ValueError(
            f"Mode {path.mode!r} with input multiplicities {path.mul1}, {path.mul2} writes {expected} channels, "
            f"but output segment {path.out} has {path.mul_out}"
        )


def make_path(
    irreps_in1: Irreps,
    irreps_in2: Irreps,
    irreps_out: Irreps,
    in1: int,
    in2: int,
    out: int,
    mode: str,
    coefficient: float,
    has_weight: bool = False,
) -> Path:
    """A path between segments ``in1``, ``in2`` and ``out`` of the given irreps."""
    (mul1, ir1), (mul2, ir2), (mul_out, ir_out) = irreps_in1[in1], irreps_in2[in2], irreps_out[out]
    return Path(in1, in2, out, mode, float(coefficient), has_weight, ir1, ir2, ir_out, mul1, mul2, mul_out)


def _filter_set(filter_ir_out) -> Optional[frozenset]:
    return None if filter_ir_out is None else frozenset(filter_ir_out)


@functools.lru_cache(maxsize=1024)
def describe_full_tensor_product(
    irreps_in1: Irreps,
    irreps_in2: Irreps,
    filter_ir_out: Optional[tuple[Irrep, ...]],
    irrep_normalization: str,
) -> TensorProductDescription:
    """Every allowed coupling of every pair of segments, channels kept apart (``uvuv``): e3nn's ``tensor_product``.

    The output irreps are in loop order (segment of input 1, segment of input 2, output irrep); callers sort them.
    """
    allowed = _filter_set(filter_ir_out)
    out_irreps, specs = [], []
    for i1, (mul1, ir1) in enumerate(irreps_in1):
        for i2, (mul2, ir2) in enumerate(irreps_in2):
            for ir_out in ir1 * ir2:
                if allowed is not None and ir_out not in allowed:
                    continue
                factor = irrep_normalization_factor(irrep_normalization, ir1, ir2, ir_out)
                specs.append((i1, i2, len(out_irreps), math.sqrt(factor)))
                out_irreps.append((mul1 * mul2, ir_out))
    irreps_out = Irreps(out_irreps)
    paths = tuple(make_path(irreps_in1, irreps_in2, irreps_out, *s[:3], "uvuv", s[3]) for s in specs)
    return TensorProductDescription(irreps_in1, irreps_in2, irreps_out, paths)


@functools.lru_cache(maxsize=1024)
def describe_elementwise_tensor_product(
    irreps_in1: Irreps,
    irreps_in2: Irreps,
    filter_ir_out: Optional[tuple[Irrep, ...]],
    irrep_normalization: str,
) -> TensorProductDescription:
    """Segment ``i`` of input 1 with segment ``i`` of input 2, channel by channel (``uuu``).

    The two irreps must already be aligned: the same number of segments with equal multiplicities.
    """
    if len(irreps_in1) != len(irreps_in2) or any(a.mul != b.mul for a, b in zip(irreps_in1, irreps_in2)):
        raise ValueError(f"Elementwise tensor product needs aligned irreps, got {irreps_in1} and {irreps_in2}")
    allowed = _filter_set(filter_ir_out)
    out_irreps, specs = [], []
    for i, ((mul, ir1), (_, ir2)) in enumerate(zip(irreps_in1, irreps_in2)):
        for ir_out in ir1 * ir2:
            if allowed is not None and ir_out not in allowed:
                continue
            factor = irrep_normalization_factor(irrep_normalization, ir1, ir2, ir_out)
            specs.append((i, i, len(out_irreps), math.sqrt(factor)))
            out_irreps.append((mul, ir_out))
    irreps_out = Irreps(out_irreps)
    paths = tuple(make_path(irreps_in1, irreps_in2, irreps_out, *s[:3], "uuu", s[3]) for s in specs)
    return TensorProductDescription(irreps_in1, irreps_in2, irreps_out, paths)


@functools.lru_cache(maxsize=1024)
def describe_linear(
    irreps_in: Irreps, irreps_out: Irreps, connections: tuple[tuple[int, int, float], ...]
) -> TensorProductDescription:
    """An equivariant linear map as a tensor product with the constant scalar ``1x0e``: one ``uvw`` path per
    connection ``(i_in, i_out, path_weight)``, weights ``(mul_in, 1, mul_out)``.

    The unit-norm CG block of ``l x 0 -> l`` is the identity over ``sqrt(2l + 1)``, so the coefficient restores that
    factor: the path computes exactly ``path_weight * sum_u w[u, w] x[u, i]``.  This lets the fully connected
    kernels run ``Linear`` layers.
    """
    scalar = Irreps("0e")
    paths = tuple(
        make_path(irreps_in, scalar, irreps_out, i_in, 0, i_out, "uvw", path_weight * math.sqrt(irreps_in[i_in].ir.dim),
                  has_weight=True)
        for i_in, i_out, path_weight in connections
    )
    return TensorProductDescription(irreps_in, scalar, irreps_out, paths)


def _square_factor(normalization: str, normalized_input: bool, ir1: Irrep, ir2: Irrep, ir_out: Irrep) -> float:
    """Squared scale of the paths between two different channels of a tensor square (e3nn's convention)."""
    if normalized_input:
        # Strictly unit-norm inputs: each irrep's components are ~1/sqrt(dim), compensate for both inputs.
        scale = {"component": ir1.dim * ir2.dim * ir_out.dim, "norm": ir1.dim * ir2.dim, "none": 1}
        if normalization not in scale:
            raise ValueError(f"irrep_normalization={normalization!r} is not one of {IRREP_NORMALIZATIONS}")
        return float(scale[normalization])
    return irrep_normalization_factor(normalization, ir1, ir2, ir_out)


def _square_diagonal_factor(normalization: str, normalized_input: bool, ir: Irrep, ir_out: Irrep) -> float:
    """Squared scale of ``x_u (x) x_u`` paths (same channel): the square of one Gaussian vector has a non-zero mean
    in the scalar output and half the variance elsewhere, which these factors undo (e3nn's convention)."""
    if normalization == "none":
        return 1.0
    if normalization not in ("component", "norm"):
        raise ValueError(f"irrep_normalization={normalization!r} is not one of {IRREP_NORMALIZATIONS}")
    if normalized_input:
        if ir_out.l == 0:
            return float(ir_out.dim * ir.dim)
        base = ir.dim * (ir.dim + 2) / 2
        return base * ir_out.dim if normalization == "component" else base
    numerator = ir_out.dim if normalization == "component" else ir.dim * ir.dim
    return numerator / (ir.dim + 2) if ir_out.l == 0 else numerator / 2


@functools.lru_cache(maxsize=1024)
def describe_tensor_square(irreps_in: Irreps, irrep_normalization: str, normalized_input: bool) -> TensorProductDescription:
    """The independent products of an input with itself: pairs of segments ``i < j`` (``uvuv``), pairs of channels
    ``u < v`` within a segment (``uvu<v``) and each channel with itself for even ``l_out`` (``uuu``)."""
    out_irreps, specs = [], []
    for i1, (mul1, ir1) in enumerate(irreps_in):
        for i2, (mul2, ir2) in enumerate(irreps_in):
            if i1 > i2:
                continue
            for ir_out in ir1 * ir2:
                if i1 < i2:
                    factor = _square_factor(irrep_normalization, normalized_input, ir1, ir2, ir_out)
                    specs.append((i1, i2, len(out_irreps), "uvuv", math.sqrt(factor)))
                    out_irreps.append((mul1 * mul2, ir_out))
                    continue
                if mul1 > 1:
                    factor = _square_factor(irrep_normalization, normalized_input, ir1, ir2, ir_out)
                    specs.append((i1, i2, len(out_irreps), "uvu<v", math.sqrt(factor)))
                    out_irreps.append((mul1 * (mul1 - 1) // 2, ir_out))
                if ir_out.l % 2 == 0:
                    factor = _square_diagonal_factor(irrep_normalization, normalized_input, ir1, ir_out)
                    specs.append((i1, i2, len(out_irreps), "uuu", math.sqrt(factor)))
                    out_irreps.append((mul1, ir_out))
    irreps_out = Irreps(out_irreps)
    paths = tuple(make_path(irreps_in, irreps_in, irreps_out, *s) for s in specs)
    return TensorProductDescription(irreps_in, irreps_in, irreps_out, paths)


def paths_into(description: TensorProductDescription, out: int) -> Sequence[Path]:
    """The paths that write into output segment ``out``."""
    return [path for path in description.paths if path.out == out]
