"""The MLP axis: a layer keeps the teacher's MLP, takes a narrower one (the first `width` channels of an importance
order measured on calibration data), or none. A layer's choice is a mixer and one of these (`Candidate.mlp`)."""

from __future__ import annotations

from .registry import OperatorSpec, register

# widths must be multiples of this (matmul tiles): 128 for real models, 32 for small ones such as the embedded teacher
LARGE_MULTIPLE, SMALL_MULTIPLE, LARGE_FROM = 128, 32, 2048
DEFAULT_FRACTIONS = (0.75, 0.5, 0.25)


def multiple(dims) -> int:
    """The multiple an MLP width must be for a model of these dimensions."""
    return LARGE_MULTIPLE if dims.intermediate_size >= LARGE_FROM else SMALL_MULTIPLE


def widths(dims) -> list[int]:
    """The default narrower widths: 3/4, 1/2 and 1/4 of the teacher's, rounded to the nearest `multiple`."""
    m = multiple(dims)
    out = [max(m, round(dims.intermediate_size * f / m) * m) for f in DEFAULT_FRACTIONS]
    return [w for w in dict.fromkeys(out) if w < dims.intermediate_size]


def _check_width(dims, params) -> str | None:
    width, m, full = params.get("width"), multiple(dims), dims.intermediate_size
    if width is not None and width % m:
        return (f"width must be a multiple of {m} up to the teacher's {full} (e.g. {', '.join(map(str, widths(dims)))}"
                f"), got {width}")
    return None


def _nothing(new, teacher_attention):
    """Not a mixer: the MLP is initialised from the teacher's by `surgery.build_mlp`."""


register(OperatorSpec(
    name="mlp", symbol="w", layer_type="", axis="mlp",
    summary="a narrower MLP: the first `width` intermediate channels by importance on calibration data",
    init_from_teacher=_nothing, params=("width",), cache_bytes=lambda dims, context, dtype_bytes=2, width=1: 0,
    default_params=lambda dims: [{"width": w} for w in widths(dims)],
    max_params=lambda dims: {"width": dims.intermediate_size}, check=_check_width,
))

register(OperatorSpec(
    name="nomlp", symbol="o", layer_type="", axis="mlp",
    summary="MLP removed; the layer keeps its mixer (an attention-only layer)",
    init_from_teacher=_nothing, cache_bytes=lambda dims, context, dtype_bytes=2: 0,
))
