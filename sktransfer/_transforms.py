"""Image preprocessing: the resize, crop and normalisation a backbone expects."""

from dataclasses import asdict, dataclass, replace

import torch
from torchvision.transforms import v2

__all__ = [
    "Preprocessing",
    "crop_transform",
    "eval_transform",
    "grey_steps",
    "resize_steps",
]

INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation-time preprocessing of a backbone's weights.

    The image's shorter side is resized to ``resize_size``, the centre
    ``crop_size`` square is cut out, and channels are normalised with
    ``mean`` and ``std``. With ``crop_mode="squash"`` (timm's name, used by
    some timm weights) both sides are resized to ``resize_size`` instead,
    without keeping the aspect ratio.

    ``intensity`` is how pixel values become 8 bits (see
    :mod:`sktransfer._intensity`). Its default is what every model did
    before it was recorded, so that older saved models load as they were
    fitted; an estimator records its own parameter here.

    ``channels`` is 3 for RGB, or 1 when images become one luminance
    channel for a stem adapted to it (see :mod:`sktransfer._channels`);
    ``mean`` and ``std`` then have one value each.
    """

    resize_size: int
    crop_size: int
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"
    intensity: object = "bit_depth"
    channels: int = 3
    crop_mode: str = "center"

    @classmethod
    def from_torchvision(cls, weights):
        """Read preprocessing from a torchvision weights enum member."""
        t = weights.transforms()
        return cls(
            resize_size=int(t.resize_size[0]),
            crop_size=int(t.crop_size[0]),
            mean=tuple(float(m) for m in t.mean),
            std=tuple(float(s) for s in t.std),
            interpolation=t.interpolation.value,
        )

    def with_image_size(self, image_size):
        """Return a copy cropping to ``image_size``, keeping the resize ratio."""
        if image_size is None or image_size == self.crop_size:
            return self
        ratio = self.resize_size / self.crop_size
        return replace(
            self, crop_size=int(image_size), resize_size=round(image_size * ratio)
        )

    def to_dict(self):
        values = asdict(self)
        # Defaults that older versions did not record are left out, so the
        # cache keys of such models and the files they wrote stay the same.
        for key, default in (("channels", 3), ("crop_mode", "center")):
            if values[key] == default:
                del values[key]
        return values

    @classmethod
    def from_dict(cls, values):
        """Inverse of :meth:`to_dict` after a JSON round trip (lists to tuples).

        Keys missing from older files take the defaults above.
        """
        return cls(**{
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
        })


def _tensor_steps(prep):
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(prep.mean), std=list(prep.std)),
    ]


def grey_steps(prep):
    """Luminance (ITU-R 601-2, Pillow's ``L``) for a one-channel ``prep``."""
    return [v2.Grayscale(1)] if prep.channels == 1 else []


def resize_steps(prep):
    """Luminance if asked, then the resize: shorter side, or both if squashed."""
    s = prep.resize_size
    size = (s, s) if prep.crop_mode == "squash" else s
    return [
        *grey_steps(prep),
        v2.Resize(size, interpolation=INTERPOLATIONS[prep.interpolation],
                  antialias=True),
    ]


def _resize_crop_steps(prep):
    return [*resize_steps(prep), v2.CenterCrop(prep.crop_size)]


def eval_transform(prep):
    """Deterministic transform: resize, centre crop, to normalised tensor."""
    return v2.Compose([*_resize_crop_steps(prep), *_tensor_steps(prep)])


def crop_transform(prep):
    """:func:`eval_transform` up to the crop: a ``uint8`` tensor ``(channels, C, C)``.

    What an exported model with ``input="uint8"`` receives; the scaling to
    [0, 1] and the normalisation then happen inside its graph.
    """
    return v2.Compose([*_resize_crop_steps(prep), v2.ToImage()])
