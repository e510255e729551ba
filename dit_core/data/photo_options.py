"""The bundled photographs (`PHOTOS`) and what a photos stream is cut from (`PhotoOptions`): plain data,
no torch or numpy, so that configs (`dit_core.data.config`) and the sweep launcher stay light to import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Photo:
    """One bundled photograph: ``skimage.data.<name>()``, stored as ``skimage/data/<file>``."""

    name: str
    file: str
    colour: bool
    licence: str


#: The photographs, colour ones first (``num_photos=k`` takes the first k). Synthetic images
#: (checkerboard, colorwheel, logo, horse, phantom), images without a stated licence (moon, page,
#: stereo motorcycle), text and tiny ones (microaneurysms 102 px, lfw 25 px) are left out.
PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "astronaut.png", True, "public domain (NASA)"),
    Photo("coffee", "coffee.png", True, "CC0 (Rachel Michetti)"),
    Photo("chelsea", "chelsea.png", True, "CC0 (Stefan van der Walt)"),
    Photo("rocket", "rocket.jpg", True, "public domain (SpaceX)"),
    Photo("hubble_deep_field", "hubble_deep_field.jpg", True, "public domain (NASA)"),
    Photo("immunohistochemistry", "ihc.png", True, "no known copyright restrictions (CMMI)"),
    Photo("retina", "retina.jpg", True, "CC0 (Mikael Haggstrom, Wikimedia)"),
    Photo("camera", "camera.png", False, "CC0 (Lav Varshney)"),
    Photo("coins", "coins.png", False, "no known copyright restrictions (Brooklyn Museum)"),
    Photo("grass", "grass.png", False, "CC0 (DeviantArt linolafett)"),
    Photo("gravel", "gravel.png", False, "CC0 (CC0Textures)"),
    Photo("brick", "brick.png", False, "CC0 (CC0Textures)"),
    Photo("clock", "clock_motion.png", False, "public domain (Stefan van der Walt)"),
)


@dataclass(frozen=True)
class PhotoOptions:
    """What a photos stream is cut from (the one place of these defaults): the first ``num_photos``
    of `PHOTOS`, grey (``channels`` 1) or colour (3), crop sides ``crop_scale`` (min, max) of the
    short side, the right-most ``holdout`` of each photo's columns kept for validation and FID."""

    channels: int = 3
    num_photos: int = 10
    crop_scale: tuple[float, float] = (0.08, 0.2)
    holdout: float = 0.25

    def __post_init__(self) -> None:
        """ValueError naming the bad option (channels, crop scale vs holdout, number of photos)."""
        object.__setattr__(self, "crop_scale", tuple(float(v) for v in self.crop_scale))
        object.__setattr__(self, "holdout", float(self.holdout))
        scale, holdout, n = self.crop_scale, self.holdout, self.num_photos
        for ok, what in (
            (self.channels in (1, 3), f"channels must be 1 (grey) or 3 (colour), got {self.channels!r}"),
            (
                0 < holdout <= 0.5,
                f"holdout must be in (0, 0.5] (fraction of columns held out), got {holdout}",
            ),
            (
                len(scale) == 2 and 0 < scale[0] <= scale[1] <= holdout,
                f"crop_scale must be (min, max) with 0 < min <= max <= holdout={holdout} so that validation "
                f"crops fit in the held-out strip; got {scale}",
            ),
            (n >= 1, f"need at least one photo, got {n}"),
            (n <= len(PHOTOS), f"num_photos must be 1..{len(PHOTOS)}, got {n}"),
        ):
            if not ok:
                raise ValueError(f"photos: {what}")
