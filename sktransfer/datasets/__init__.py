"""Small image datasets shipped with sktransfer, for examples and tests."""

from pathlib import Path

from .._folder import load_image_folder

__all__ = ["emoji_folder", "load_emoji"]


def emoji_folder():
    """Path of the bundled ``emoji`` image folder.

    222 Noto Emoji drawings (64 x 64 RGBA PNG, Apache License 2.0) in eight
    classes, one sub-folder each: bird, bug, fruit, instrument, mammal,
    sea_animal, vegetable, vehicle. Classes hold 12 to 66 images, few enough
    that a pretrained backbone clearly beats training from scratch.
    ``emoji_SOURCE.md`` beside the folder gives the source package, version
    and licence.

    Returns
    -------
    path : pathlib.Path
        The folder, usable with :func:`sktransfer.load_image_folder`.

    Examples
    --------
    >>> from sktransfer.datasets import emoji_folder
    >>> sorted(p.name for p in emoji_folder().iterdir() if p.is_dir())[:2]
    ['bird', 'bug']
    """
    return Path(__file__).resolve().parent / "emoji"


def load_emoji():
    """Load the bundled ``emoji`` dataset as image paths and labels.

    Returns
    -------
    paths : ndarray of shape (222,), dtype=object
        Image file paths, sorted by class then name.
    labels : ndarray of shape (222,), dtype=object
        Class names.

    See Also
    --------
    emoji_folder : The folder itself, its classes and licence.

    Examples
    --------
    >>> from sktransfer.datasets import load_emoji
    >>> paths, labels = load_emoji()
    >>> len(paths), labels[0]
    (222, 'bird')
    """
    return load_image_folder(emoji_folder())
