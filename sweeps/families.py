"""DiT model shapes: the paper's S/B/L/XL families, their scaled-down demo versions, custom shapes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dit_core import spec


def whole(v: object, low: int = 1) -> bool:
    """Whether ``v`` is an int >= ``low`` (a bool, YAML's ``true``, is none): a size, a count, a seed."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def positive(v: object) -> bool:
    """Whether ``v`` is a finite number > 0 (a bool is none): a budget, an lr."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf


@dataclass(frozen=True)
class ModelShape:
    """One transformer shape (patch size is a separate grid axis).

    name: ``"S"``, ``"B"``, ``"L"``, ``"XL"`` for the families, ``"d4w64h4"`` for custom shapes.
    depth: number of DiT blocks; hidden_size: token width; num_heads: attention heads.
    """

    name: str
    depth: int
    hidden_size: int
    num_heads: int

    def describe(self) -> str:
        return f"d{self.depth} w{self.hidden_size} h{self.num_heads}"


#: The paper's families (`dit_core.spec.FAMILIES`, Table 1 of Peebles & Xie) as shapes.
FAMILIES: dict[str, ModelShape] = {name: ModelShape(name, *shape) for name, shape in spec.FAMILIES.items()}


@dataclass(frozen=True)
class Scale:
    """Shrinks the families for CPU demos: width / width_div, depth / depth_div, and heads.

    width_div: divides every family's width (must divide 384, 768, 1024 and 1152: 1, 2, 4, ..., 128,
        unless ``round_width``).
    depth_div: divides every family's depth (must divide 12, 24 and 28: 1, 2 or 4).
    head_dim: ``None`` keeps the paper's head counts (6, 12, 16, 16), which at large width_div leaves
        heads of 2-4 channels (or none that divide, e.g. XL at width_div 32); an integer sets
        ``heads = width / head_dim`` for every family (the paper's head dim is 64 for S/B/L and 72
        for XL), so tiny models keep usable attention heads.
    round_width: with ``head_dim`` set, every ``width / width_div`` is rounded to the nearest multiple
        of ``head_dim`` (at least one head) instead of having to divide exactly (width ratios then
        hold to within half a head); e.g. width_div 48: S 8, B 16, L 21.3 -> 20, XL 24. The demo's
        scale: docs/sweeps.md.
    """

    width_div: int = 1
    depth_div: int = 1
    head_dim: int | None = None
    round_width: bool = False

    def __post_init__(self) -> None:
        for f in ("width_div", "depth_div"):
            v = getattr(self, f)
            if not whole(v):
                raise ValueError(f"scale.{f} must be a positive integer, got {v!r}")
        h = self.head_dim
        if h is not None and not whole(h):
            raise ValueError(
                f"scale.head_dim must be a positive integer or null (keep the head counts), got {h!r}"
            )
        if self.round_width and h is None:
            raise ValueError(
                "scale.round_width rounds widths to a multiple of scale.head_dim: set scale.head_dim too"
            )

    def apply(self, shape: ModelShape) -> ModelShape:
        """The scaled shape; errors if a factor does not divide the family's depth/width evenly."""
        for size, div, what in (
            (shape.hidden_size, self.width_div, "hidden_size"),
            (shape.depth, self.depth_div, "depth"),
        ):
            if size % div and not (what == "hidden_size" and self.round_width):
                raise ValueError(
                    f"scale: {what} {size} of DiT-{shape.name} is not divisible by {div}; "
                    "pick factors that divide all family sizes (width_div 1,2,4,...,128; depth_div 1,2,4)"
                    + (", or set scale.round_width with scale.head_dim" if what == "hidden_size" else "")
                )
        if self.round_width:
            width = max(1, round(shape.hidden_size / self.width_div / self.head_dim)) * self.head_dim
        else:
            width = shape.hidden_size // self.width_div
        if self.head_dim is None:
            if width % shape.num_heads:
                raise ValueError(
                    f"scale: width {width} of scaled DiT-{shape.name} is not divisible by its "
                    f"{shape.num_heads} heads; use a smaller width_div or set scale.head_dim"
                )
            heads = shape.num_heads
        else:
            if width % self.head_dim:
                raise ValueError(
                    f"scale: width {width} of scaled DiT-{shape.name} is not divisible by "
                    f"head_dim {self.head_dim}; choose a head_dim that divides every scaled width"
                )
            heads = width // self.head_dim
        return ModelShape(shape.name, shape.depth // self.depth_div, width, heads)


def family_shape(name: str, scale: Scale | None = None) -> ModelShape:
    """The (optionally scaled) shape of family ``name`` (case-insensitive ``S``/``B``/``L``/``XL``)."""
    key = name.strip().upper().removeprefix("DIT-")
    if key not in FAMILIES:
        raise ValueError(
            f"unknown model family {name!r}; known families: {', '.join(FAMILIES)} "
            "(custom shapes: --depths/--widths or `shapes:` in the YAML)"
        )
    shape = FAMILIES[key]
    return scale.apply(shape) if scale is not None else shape


def custom_shape(depth: int, hidden_size: int, num_heads: int) -> ModelShape:
    """A named custom shape ``d{depth}w{width}h{heads}``; checks heads divide the width."""
    for what, v in (("depth", depth), ("hidden_size", hidden_size), ("num_heads", num_heads)):
        if not whole(v):
            raise ValueError(f"custom shape: {what} must be a positive integer, got {v!r}")
    if hidden_size % num_heads:
        raise ValueError(
            f"custom shape: hidden_size {hidden_size} is not divisible by num_heads {num_heads}; "
            "choose a width that is a multiple of the head count"
        )
    return ModelShape(f"d{depth}w{hidden_size}h{num_heads}", depth, hidden_size, num_heads)
