"""DiT model shapes: the paper's S/B/L/XL families, their scaled-down demo versions, custom shapes."""

from __future__ import annotations

from dataclasses import dataclass

from dit_core import spec

__all__ = ["FAMILIES", "ModelShape", "Scale", "family_shape", "custom_shape"]


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

    @property
    def is_family(self) -> bool:
        return self.name in FAMILIES

    def describe(self) -> str:
        return f"d{self.depth} w{self.hidden_size} h{self.num_heads}"


#: The paper's families (`dit_core.spec.FAMILIES`, Table 1 of Peebles & Xie) as shapes.
FAMILIES: dict[str, ModelShape] = {name: ModelShape(name, *shape) for name, shape in spec.FAMILIES.items()}


@dataclass(frozen=True)
class Scale:
    """Shrinks the families for CPU demos: width / width_div, depth / depth_div, heads unchanged.

    With the demo's factors (8, 4) the families become S d3 w48, B d3 w96, L d6 w128, XL d7 w144:
    the depth ratios (1:1:2:2.33), width ratios (1:2:2.67:3) and head counts of the paper's
    family are kept exactly, so S < B < L < XL still spans ~30x in parameters.
    """

    width_div: int = 1
    depth_div: int = 1

    def __post_init__(self) -> None:
        for f in ("width_div", "depth_div"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"scale.{f} must be a positive integer, got {v!r}")

    @property
    def is_identity(self) -> bool:
        return self.width_div == 1 and self.depth_div == 1

    def apply(self, shape: ModelShape) -> ModelShape:
        """The scaled shape; errors if a factor does not divide the family's depth/width evenly."""
        for size, div, what in (
            (shape.hidden_size, self.width_div, "hidden_size"),
            (shape.depth, self.depth_div, "depth"),
        ):
            if size % div:
                raise ValueError(
                    f"scale: {what} {size} of DiT-{shape.name} is not divisible by {div}; "
                    "pick factors that divide all family sizes (width_div 1,2,4,8,16; depth_div 1,2,4)"
                )
        width = shape.hidden_size // self.width_div
        if width % shape.num_heads:
            raise ValueError(
                f"scale: width {width} of scaled DiT-{shape.name} is not divisible by its "
                f"{shape.num_heads} heads; use a smaller width_div"
            )
        return ModelShape(shape.name, shape.depth // self.depth_div, width, shape.num_heads)


def family_shape(name: str, scale: Scale | None = None) -> ModelShape:
    """The (optionally scaled) shape of family ``name`` (case-insensitive ``S``/``B``/``L``/``XL``)."""
    key = name.strip().upper()
    if key.startswith("DIT-"):
        key = key[4:]
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
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"custom shape: {what} must be a positive integer, got {v!r}")
    if hidden_size % num_heads:
        raise ValueError(
            f"custom shape: hidden_size {hidden_size} is not divisible by num_heads {num_heads}; "
            "choose a width that is a multiple of the head count"
        )
    return ModelShape(f"d{depth}w{hidden_size}h{num_heads}", depth, hidden_size, num_heads)
