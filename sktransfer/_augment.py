"""Augmentation policies and test-time views on decoded uint8 image tensors.

Every callable here takes the stored form of an image, a ``uint8`` tensor of
shape ``(3, S, S)`` with ``S = prep.resize_size`` (the shorter side resized
to ``S`` and the centre square kept, see :class:`~sktransfer._decoded.DecodedImages`),
and returns the float tensor a backbone takes: shape ``(3, C, C)`` with
``C = prep.crop_size``, scaled to ``[0, 1]`` and normalised with
``prep.mean`` and ``prep.std``. Keeping the ``S``-square rather than the final
``C``-crop leaves random crops and shifts some room to move.

All of them also accept a batch ``(N, 3, S, S)``: torchvision's v2
transforms act on the trailing three dimensions (random ones then draw one
set of parameters for the whole batch).
"""

import difflib

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ._compat import StrOptions
from ._transforms import INTERPOLATIONS

__all__ = [
    "AUGMENT_CONSTRAINT",
    "DEFAULT_POLICY",
    "POLICIES",
    "TTA_CONSTRAINT",
    "TTA_MODES",
    "check_augment",
    "final_steps",
    "resolve_policy",
    "tta_average",
    "tta_views",
]

DEFAULT_POLICY = "light"


def _light(prep):
    return [
        v2.RandomResizedCrop(
            prep.crop_size,
            scale=(0.7, 1.0),
            interpolation=INTERPOLATIONS[prep.interpolation],
            antialias=True,
        ),
        v2.RandomHorizontalFlip(),
    ]


def _classic(prep):
    # Keras ImageDataGenerator(rotation_range=20, width_shift_range=0.1,
    # height_shift_range=0.1, zoom_range=0.2, horizontal_flip=True), the recipe
    # of the classic transfer-learning tutorials. Keras fills uncovered pixels
    # by repeating the edge (fill_mode="nearest"); torchvision fills with 0.
    # The final centre crop of the S-square cuts most of that fill away.
    return [
        v2.RandomAffine(
            degrees=20,
            translate=(0.1, 0.1),
            scale=(0.8, 1.2),
            interpolation=INTERPOLATIONS[prep.interpolation],
        ),
        v2.RandomHorizontalFlip(),
    ]


def _trivialaugment(prep):
    # torchvision's reference classification recipe: crop and flip, then one
    # randomly chosen colour or geometry operation of random strength.
    return [
        *_light(prep),
        v2.TrivialAugmentWide(interpolation=INTERPOLATIONS[prep.interpolation]),
    ]


POLICIES = {"light": _light, "classic": _classic, "trivialaugment": _trivialaugment}

#: ``_parameter_constraints`` entry for an estimator's ``augment`` parameter.
AUGMENT_CONSTRAINT = ["boolean", StrOptions(set(POLICIES)), callable]


def final_steps(prep):
    """Centre crop to ``prep.crop_size``, scale to ``[0, 1]``, normalise.

    The same steps as the end of ``eval_transform(prep)``, on tensors. The
    crop is a no-op for an input that already has the crop size; a smaller
    one is zero-padded (``v2.CenterCrop``'s behaviour).
    """
    return [
        v2.CenterCrop(prep.crop_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(prep.mean), std=list(prep.std)),
    ]


def _unknown(kind, value, valid):
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    options = ", ".join(repr(v) for v in valid)
    return ValueError(f"Unknown {kind} {value!r}.{hint} Valid values: {options}.")


def check_augment(augment):
    """Validate an ``augment`` value; return it unchanged.

    Raises
    ------
    ValueError
        For an unknown policy name, with the closest valid one.
    TypeError
        For a value that is neither a bool, a policy name nor a callable.
    """
    if isinstance(augment, bool) or callable(augment):
        return augment
    if isinstance(augment, str):
        if augment not in POLICIES:
            raise _unknown("augmentation policy", augment, sorted(POLICIES))
        return augment
    raise TypeError(
        "augment must be a bool, one of "
        f"{', '.join(repr(p) for p in sorted(POLICIES))} or a callable, got "
        f"{type(augment).__name__} {augment!r} instead."
    )


def resolve_policy(augment, prep):
    """The training transform for an ``augment`` value, or None.

    Parameters
    ----------
    augment : bool, str or callable
        ``False``: no augmentation (returns None; use the first of
        ``tta_views(False, prep)`` for the deterministic view).
        ``True``: the default policy, ``"light"``.
        ``"light"``: random resized crop to ``prep.crop_size`` covering 70 to
        100 % of the stored square, and a horizontal flip.
        ``"classic"``: the Keras ``ImageDataGenerator`` recipe: rotation up to
        20 degrees, shifts up to 10 % of width and height, zoom 0.8 to 1.2,
        horizontal flip (uncovered pixels are black), then the centre crop.
        ``"trivialaugment"``: ``"light"`` followed by
        ``v2.TrivialAugmentWide``.
        A callable (e.g. a ``torchvision.transforms.v2`` transform): receives
        the stored ``uint8`` tensor ``(3, S, S)``, ``S = prep.resize_size``,
        and must return a tensor ``(3, H, W)``, either ``uint8`` or float in
        ``[0, 1]``, without normalising it. ``final_steps(prep)`` is appended:
        centre crop to ``prep.crop_size`` (zero-padding a smaller side), scale
        to float and normalise with ``prep.mean`` and ``prep.std``.
    prep : Preprocessing
        The backbone's preprocessing.

    Returns
    -------
    policy : callable or None
        Maps a ``uint8`` tensor ``(3, S, S)`` to a float tensor
        ``(3, prep.crop_size, prep.crop_size)``; random on every call.

    Examples
    --------
    >>> import torch
    >>> from sktransfer._transforms import Preprocessing
    >>> prep = Preprocessing(36, 32, (0.5,) * 3, (0.25,) * 3)
    >>> policy = resolve_policy("classic", prep)
    >>> policy(torch.zeros(3, 36, 36, dtype=torch.uint8)).shape
    torch.Size([3, 32, 32])
    """
    augment = check_augment(augment)
    if augment is False:
        return None
    if augment is True:
        augment = DEFAULT_POLICY
    if isinstance(augment, str):
        steps = POLICIES[augment](prep)
    else:
        steps = [augment]
    return v2.Compose([*steps, *final_steps(prep)])


# -- test-time augmentation --------------------------------------------------

TTA_MODES = ("flip", "crops")

#: ``_parameter_constraints`` entry for an estimator's ``tta`` parameter.
TTA_CONSTRAINT = ["boolean", StrOptions(set(TTA_MODES))]


class _View:
    """One deterministic view: crop a box of the stored square, maybe flip."""

    def __init__(self, prep, top, left, flip, name):
        self.top, self.left, self.size = top, left, prep.crop_size
        self.flip = flip
        self.name = name
        self._finish = v2.Compose(final_steps(prep)[1:])

    def __call__(self, image):
        out = F.crop(image, self.top, self.left, self.size, self.size)
        if self.flip:
            out = F.horizontal_flip(out)
        return self._finish(out)

    def __repr__(self):
        return f"_View({self.name!r})"


def _centre_offset(stored, crop):
    # v2.CenterCrop's rounding, so the centre view equals eval_transform's.
    return int(round((stored - crop) / 2.0))


def tta_views(tta, prep):
    """Deterministic views for test-time augmentation.

    Parameters
    ----------
    tta : bool or {"flip", "crops"}
        ``False``: ``[centre]``, the evaluation view (the same tensor as
        ``eval_transform(prep)``, up to one pixel of centre-crop rounding).
        ``True`` or ``"flip"``: ``[centre, flipped centre]``.
        ``"crops"``: ten views, the centre and four corner crops of the
        stored square, each as is and flipped horizontally.
    prep : Preprocessing
        The backbone's preprocessing.

    Returns
    -------
    views : list of callable
        Each maps a ``uint8`` tensor ``(..., 3, S, S)``, ``S = prep.resize_size``,
        to a normalised float tensor ``(..., 3, C, C)``, ``C = prep.crop_size``.

    Examples
    --------
    >>> from sktransfer._transforms import Preprocessing
    >>> prep = Preprocessing(36, 32, (0.5,) * 3, (0.25,) * 3)
    >>> len(tta_views("crops", prep))
    10
    """
    if not isinstance(tta, bool) and tta not in TTA_MODES:
        raise _unknown("test-time augmentation", tta, list(TTA_MODES))
    if tta is True:
        tta = "flip"
    s, c = prep.resize_size, prep.crop_size
    if c > s:
        raise ValueError(
            f"crop_size {c} is larger than resize_size {s}; views crop the "
            "stored resize_size square."
        )
    mid = _centre_offset(s, c)
    boxes = [("centre", mid, mid)]
    if tta == "crops":
        far = s - c
        boxes += [("top-left", 0, 0), ("top-right", 0, far),
                  ("bottom-left", far, 0), ("bottom-right", far, far)]
    views = [_View(prep, top, left, False, name) for name, top, left in boxes]
    if tta in ("flip", "crops"):
        views += [_View(prep, top, left, True, f"{name} flipped")
                  for name, top, left in boxes]
    return views


def tta_average(model_fn, images, views, *, output="logits"):
    """Class probabilities averaged over test-time views.

    Probabilities, not logits, are averaged: the mean of softmax outputs is
    again a distribution and one very confident view cannot outweigh the
    others without bound.

    Parameters
    ----------
    model_fn : callable
        Maps a float batch ``(N, 3, C, C)`` to ``(N, n_classes)`` scores.
    images : torch.Tensor
        ``uint8`` batch ``(N, 3, S, S)`` of stored images.
    views : list of callable
        From :func:`tta_views`.
    output : {"logits", "proba"}, default="logits"
        What ``model_fn`` returns: logits (softmax is applied) or
        probabilities (used as they are).

    Returns
    -------
    proba : torch.Tensor
        ``(N, n_classes)``, float32.
    """
    if output not in ("logits", "proba"):
        raise _unknown("model output", output, ["logits", "proba"])
    if not views:
        raise ValueError("views is empty; pass at least one view from tta_views.")
    total = None
    for view in views:
        scores = model_fn(view(images)).float()
        proba = torch.softmax(scores, dim=1) if output == "logits" else scores
        total = proba if total is None else total + proba
    return total / len(views)
