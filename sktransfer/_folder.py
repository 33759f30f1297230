"""Read an image-folder dataset (one sub-folder per class) into paths and labels."""

import os
import warnings

import numpy as np

from ._warnings import user_stacklevel

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

# Extensions of the formats the image loader accepts (see _images.ALLOWED_FORMATS).
IMAGE_EXTENSIONS = (
    ".bmp", ".gif", ".ico", ".jpeg", ".jpg", ".mpo", ".pbm", ".pgm", ".png",
    ".pnm", ".ppm", ".tif", ".tiff", ".webp",
)  # fmt: skip

# How many skipped names a warning spells out before it only counts the rest.
_MAX_LISTED = 10


def _is_hidden(name):
    # Dot files are the convention everywhere that matters here: .DS_Store,
    # ._resource forks from macOS, .ipynb_checkpoints, .git.
    return name.startswith(".")


def _format_skipped(skipped):
    shown = ", ".join(skipped[:_MAX_LISTED])
    more = len(skipped) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def load_image_folder(path, *, extensions=IMAGE_EXTENSIONS):
    """Load the image paths and class labels of an image-folder dataset.

    The layout is the one of torchvision's ``ImageFolder``: each direct
    sub-folder of ``path`` is a class, named by the folder, and holds that
    class's images, possibly in nested folders::

        path/cat/001.jpg
        path/cat/more/002.png
        path/dog/003.jpg

    Hidden files and folders (names starting with ``"."``), files whose
    extension is not an image extension, and loose files directly in
    ``path`` are skipped, and one ``UserWarning`` lists them with their count,
    so nothing disappears silently. Files are not opened: unreadable images
    surface in ``fit`` (see ``on_bad_image``).

    Parameters
    ----------
    path : str or path-like
        The dataset's root folder.
    extensions : tuple of str, default=IMAGE_EXTENSIONS
        Lower-case file extensions, with the dot, counted as images; the
        comparison ignores case (``.JPG`` is an image).

    Returns
    -------
    paths : ndarray of shape (n_images,), dtype=object
        Image file paths (``str``), sorted by class, then by path within the
        class, so the order is the same on every machine.
    labels : ndarray of shape (n_images,), dtype=object
        The class (folder name) of each image.

    Raises
    ------
    ValueError
        If ``path`` does not exist or is not a folder, has no class
        sub-folders, or a class folder has no image.

    See Also
    --------
    sktransfer.PretrainedCNNClassifier : Takes these paths as ``X``.

    Examples
    --------
    >>> from sktransfer import load_image_folder
    >>> from sktransfer.datasets import emoji_folder
    >>> paths, labels = load_image_folder(emoji_folder())
    >>> paths.shape, sorted(set(labels))[:3]
    ((222,), ['bird', 'bug', 'fruit'])
    """
    root = os.fspath(path)
    if not os.path.exists(root):
        raise ValueError(
            f"Image folder {root!r} does not exist. Pass the folder that holds "
            "one sub-folder per class."
        )
    if not os.path.isdir(root):
        raise ValueError(
            f"Image folder {root!r} is a file, not a folder. Pass the folder "
            "that holds one sub-folder per class, e.g. data/ for data/cat/1.jpg."
        )
    exts = tuple(e.lower() for e in extensions)
    skipped = []
    classes = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        rel = entry.name
        if _is_hidden(entry.name):
            skipped.append(rel)
        elif entry.is_dir():
            classes.append(entry.name)
        else:
            skipped.append(rel)  # a loose file has no class
    if not classes:
        raise ValueError(
            f"Image folder {root!r} has no class sub-folders. Put each class's "
            f"images in a sub-folder named after the class, e.g. "
            f"{os.path.join(root, 'cat', '1.jpg')!r}."
        )

    paths, labels, empty = [], [], []
    for cls in classes:
        found = []
        # followlinks lets a class folder gather images linked in from elsewhere.
        for dirpath, dirnames, filenames in os.walk(
            os.path.join(root, cls), followlinks=True
        ):
            rel_dir = os.path.relpath(dirpath, root)
            # Pruning in place stops os.walk from descending into hidden folders.
            for d in [d for d in dirnames if _is_hidden(d)]:
                skipped.append(os.path.join(rel_dir, d) + os.sep)
                dirnames.remove(d)
            for name in filenames:
                if _is_hidden(name) or not name.lower().endswith(exts):
                    skipped.append(os.path.join(rel_dir, name))
                else:
                    found.append(os.path.join(dirpath, name))
        if not found:
            empty.append(cls)
        found.sort()
        paths.extend(found)
        labels.extend([cls] * len(found))

    if empty:
        raise ValueError(
            f"Class folder(s) {', '.join(map(repr, empty))} in {root!r} have no "
            f"image files (extensions: {', '.join(exts)}). Add images, or remove "
            "the folder(s) if they are not classes."
        )
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} hidden or non-image entr"
            f"{'y' if len(skipped) == 1 else 'ies'} in {root!r}: "
            f"{_format_skipped(sorted(skipped))}.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return np.array(paths, dtype=object), np.array(labels, dtype=object)
