"""Read an image-folder dataset (one sub-folder per class) into paths and labels.

One walker, :func:`walk_images`, lists the image files under a folder for
both :func:`load_image_folder` and the ``sktransfer`` command, so the two
skip the same entries and report them with the same warning.
"""

import os
import warnings

import numpy as np

from ._warnings import user_stacklevel

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_image_folder", "walk_images"]

# Extensions of the formats the image loader accepts (see _images.ALLOWED_FORMATS).
IMAGE_EXTENSIONS = (
    ".bmp", ".dcm", ".gif", ".ico", ".jpeg", ".jpg", ".mpo", ".pbm", ".pgm",
    ".png", ".pnm", ".ppm", ".tif", ".tiff", ".webp",
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


def _dir_key(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def walk_images(top, *, extensions=IMAGE_EXTENSIONS, rel_to=None, skipped=None,
                links=None):
    """Image files under folder ``top``, recursively, in sorted order.

    Symbolic links are followed, but every directory is entered at most once
    (by its ``(st_dev, st_ino)``), so a link that loops back ends the descent
    instead of repeating files forever. Hidden files and folders (names
    starting with ``"."``) are pruned, files without an image extension are
    left out, and links that point nowhere are left out.

    Parameters
    ----------
    top : str or path-like
        The folder to walk.
    extensions : tuple of str, default=IMAGE_EXTENSIONS
        File extensions, with the dot, counted as images; case is ignored.
    rel_to : str or None, default=None
        Folder that the names recorded in ``skipped`` and ``links`` are
        relative to; ``None`` means ``top``'s parent.
    skipped : list or None, default=None
        If given, the hidden and non-image entries are appended to it
        (folders with a trailing separator).
    links : list or None, default=None
        If given, a note for every link that was not followed (a loop, or a
        link to nothing) is appended to it.

    Returns
    -------
    paths : list of str
        The image files, each as ``top`` joined with its path below it.

    Examples
    --------
    >>> from sktransfer._folder import walk_images
    >>> from sktransfer.datasets import emoji_folder
    >>> len(walk_images(emoji_folder() / "bird")) > 0
    True
    """
    top = os.fspath(top)
    rel_to = os.path.dirname(os.path.abspath(top)) if rel_to is None else rel_to
    exts = tuple(e.lower() for e in extensions)
    skipped = [] if skipped is None else skipped
    links = [] if links is None else links
    visited = {_dir_key(top)}
    found = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        rel_dir = os.path.relpath(dirpath, rel_to)
        keep = []
        for d in sorted(dirnames):
            rel = os.path.join(rel_dir, d)
            if _is_hidden(d):
                skipped.append(rel + os.sep)
                continue
            try:
                key = _dir_key(os.path.join(dirpath, d))
            except OSError:
                links.append(f"{rel} (cannot be read)")
                continue
            if key in visited:
                # os.walk(followlinks=True) has no loop check of its own.
                links.append(f"{rel} (a link to a folder already listed)")
                continue
            visited.add(key)
            keep.append(d)
        dirnames[:] = keep  # pruning in place stops os.walk descending
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.join(rel_dir, name)
            if _is_hidden(name) or not name.lower().endswith(exts):
                skipped.append(rel)
            elif not os.path.exists(full):
                links.append(f"{rel} (a link to nothing)")
            else:
                found.append(full)
    return found


def _warn(root, skipped, links):
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} hidden or non-image entr"
            f"{'y' if len(skipped) == 1 else 'ies'} in {root!r}: "
            f"{_format_skipped(sorted(skipped))}.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    if links:
        warnings.warn(
            f"Skipped {len(links)} symbolic link{'' if len(links) == 1 else 's'}"
            f" or duplicate file{'' if len(links) == 1 else 's'} in {root!r} "
            f"so that no image is listed twice or under another class: "
            f"{_format_skipped(sorted(links))}.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def list_images(items, *, extensions=IMAGE_EXTENSIONS):
    """Files as given, and the image files in folders, each real file once.

    Folders are walked with :func:`walk_images`; what it skips is reported
    in one warning per folder. A file that two folders (or links) lead to
    is listed once, at its first path.

    Parameters
    ----------
    items : iterable of str or path-like
        Image files and folders.
    extensions : tuple of str, default=IMAGE_EXTENSIONS
        File extensions counted as images inside folders.

    Returns
    -------
    paths : list of str

    Raises
    ------
    ValueError
        If an item does not exist, or a folder holds no image file.
    """
    paths, seen = [], set()
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            skipped, links = [], []
            found = walk_images(item, extensions=extensions, rel_to=item,
                                skipped=skipped, links=links)
            for path in found:
                real = os.path.realpath(path)
                if real in seen:
                    links.append(
                        f"{os.path.relpath(path, item)} (a file already listed)"
                    )
                else:
                    seen.add(real)
                    paths.append(path)
            _warn(item, skipped, links)
            if not found:
                raise ValueError(
                    f"Folder {item!r} contains no image files (extensions: "
                    f"{', '.join(extensions)})."
                )
        elif os.path.exists(item):
            seen.add(os.path.realpath(item))
            paths.append(item)
        else:
            raise ValueError(f"Image or folder {item!r} does not exist.")
    return paths


def _owner(real, class_dirs):
    """The class whose folder really holds ``real``, or None (outside all)."""
    best = None
    for cls, cls_real in class_dirs.items():
        if real.startswith(cls_real + os.sep) and (
            best is None or len(cls_real) > len(class_dirs[best])
        ):
            best = cls
    return best


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

    Symbolic links are followed, and each real file is listed at most once,
    with one label:

    - a link that leads into another class's folder (``cat/x.png`` pointing
      at ``dog/y.png``, or a linked folder inside ``dog``) is skipped: the
      file is listed once, under the class folder it really lives in;
    - a link to a file outside every class folder gives that file the label
      of the class folder the link is in, so classes may be built from links
      into a shared pool of images; a pool file linked from two classes has
      no single label and is skipped;
    - a file reached twice within one class (a link beside the file, a
      folder linked twice, a link that loops back) is listed once, at its
      own path rather than a link's.

    A second ``UserWarning`` names every link or duplicate skipped.

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
        sub-folders, two class folders are the same folder, or a class
        folder has no image.

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
    skipped, links = [], []
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
    class_dirs = {cls: os.path.realpath(os.path.join(root, cls)) for cls in classes}
    by_real = {}
    for cls, real in class_dirs.items():
        if real in by_real:
            raise ValueError(
                f"Class folders {by_real[real]!r} and {cls!r} in {root!r} are "
                f"the same folder ({real!r}), so its images would have two "
                "labels. Remove one of the links."
            )
        by_real[real] = cls

    # real file -> [(class, path, path is itself a link)]
    claims = {}
    for cls in classes:
        for found in walk_images(os.path.join(root, cls), extensions=exts,
                                 rel_to=root, skipped=skipped, links=links):
            real = os.path.realpath(found)
            owner = _owner(real, class_dirs)
            if owner is not None and owner != cls:
                links.append(
                    f"{os.path.relpath(found, root)} (a link into class "
                    f"{owner!r}, listed there)"
                )
                continue
            claims.setdefault(real, []).append((cls, found, os.path.islink(found)))

    per_class = {cls: [] for cls in classes}
    for real, found in claims.items():
        labels_of = sorted({cls for cls, _, _ in found})
        if len(labels_of) > 1:
            for cls, p, _ in found:
                links.append(
                    f"{os.path.relpath(p, root)} (the same file is linked from "
                    f"classes {', '.join(map(repr, labels_of))})"
                )
            continue
        # The file's own path, if the walk met it, before any link to it.
        found.sort(key=lambda c: (c[2], c[1]))
        (cls, keep, _), rest = found[0], found[1:]
        per_class[cls].append(keep)
        for _, p, _ in rest:
            links.append(
                f"{os.path.relpath(p, root)} (the same file as "
                f"{os.path.relpath(keep, root)})"
            )

    paths, labels, empty = [], [], []
    for cls in classes:
        found = sorted(per_class[cls])
        if not found:
            empty.append(cls)
        paths.extend(found)
        labels.extend([cls] * len(found))

    # Before an error too: a class may be empty because its links were skipped.
    _warn(root, skipped, links)
    if empty:
        raise ValueError(
            f"Class folder(s) {', '.join(map(repr, empty))} in {root!r} have no "
            f"image files (extensions: {', '.join(exts)}). Add images, or remove "
            "the folder(s) if they are not classes."
        )
    return np.array(paths, dtype=object), np.array(labels, dtype=object)
