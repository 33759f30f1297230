"""Shared pieces of the benchmarks: generated images, a timer, the raw pass.

Every ratio compares runs made in the same process on the same images, so
machine load shifts both sides; absolute seconds are printed for context.
"""

import os
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from sktransfer._runtime import default_num_workers
from sktransfer._transforms import eval_transform

CLASSES = ((200, 60, 40), (40, 180, 60), (50, 70, 200), (190, 190, 50))


def make_images(folder, n_images, size=(320, 256), seed=0, quality=90):
    """``n_images`` JPEGs in four colour classes with smooth texture and noise.

    Returns paths (object array) and integer labels. Existing files are
    reused, so several benchmarks can share one folder.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / 40.0
    paths, labels = [], []
    for i in range(n_images):
        label = i % len(CLASSES)
        path = os.path.join(folder, f"img_{i:05d}_{label}.jpg")
        if not os.path.exists(path):
            phase = rng.uniform(0, 6.3, 3)
            wave = np.stack(
                [np.sin(xx * (1 + c) + yy + phase[c]) for c in range(3)], axis=-1
            )
            arr = np.array(CLASSES[label]) + 40 * wave
            arr += rng.normal(0, 12, arr.shape)
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
                path, quality=quality
            )
        paths.append(path)
        labels.append(label)
    return np.array(paths, dtype=object), np.array(labels)


@contextmanager
def timed(results, name):
    start = time.perf_counter()
    yield
    results[name] = time.perf_counter() - start
    print(f"  {name}: {results[name]:.1f} s", file=sys.stderr, flush=True)


class PlainImages(Dataset):
    """What a user would write: open, convert to RGB, transform."""

    def __init__(self, paths, transform, labels=None):
        self.paths, self.transform, self.labels = paths, transform, labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as img:
            x = self.transform(img.convert("RGB"))
        return x if self.labels is None else (x, int(self.labels[i]))


def torchvision_backbone(name):
    """The torchvision model with its classifier replaced by an identity."""
    from torchvision.models import get_model

    model = get_model(name, weights=None)
    if hasattr(model, "fc"):
        model.fc = torch.nn.Identity()
    else:
        model.classifier = torch.nn.Identity()
    return model.eval()


def raw_forward(name, paths, prep, batch_size=64):
    """One fp32 channels-last pass of the backbone over the images."""
    model = torchvision_backbone(name).to(memory_format=torch.channels_last)
    loader = DataLoader(
        PlainImages(paths, eval_transform(prep)),
        batch_size=batch_size,
        num_workers=default_num_workers(len(paths), batch_size),
    )
    outputs = []
    with torch.inference_mode():
        for images in loader:
            images = images.contiguous(memory_format=torch.channels_last)
            outputs.append(model(images))
    return torch.cat(outputs)


def default_preprocessing(name, image_size=None):
    from sktransfer import get_backbone

    return get_backbone(name).build(None).preprocessing.with_image_size(image_size)


def peak_rss_mib():
    """Peak resident memory of this process, in MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
