"""JPEG and PNG decoders side by side, on the way to a 224x224 evaluation crop.

Photo-like images (smooth gradients, waves, shapes and sensor-like noise,
generated from a fixed seed and saved by Pillow, JPEG quality 90) at 0.3 MP
(640x480), 3 MP (2048x1536) and 12 MP (4000x3000) are decoded to 8-bit RGB
the way the library needs them for ``resize_size=256, crop_size=224``:

- ``pillow`` is the library's own path (``read_rgb_image`` with
  ``min_side=256``: ``draft()`` picks the smallest DCT scale among 1/1, 1/2,
  1/4 and 1/8 whose shorter side stays >= 256);
- ``simplejpeg`` asks for at least the size Pillow's draft decodes at, so it
  lands on the same scale; ``simplejpeg n/8`` asks for a shorter side
  >= 256 and may land on any of libjpeg-turbo's n/8 scales;
- ``turbojpeg`` (PyTurboJPEG) uses the scaling factor Pillow's draft uses;
- ``torchvision`` (``torchvision.io.decode_jpeg`` / ``decode_png``) decodes
  at full size, having no reduced-scale mode on the CPU.

Every decoded image then goes through the same step, the library's
``crop_transform`` on a Pillow image (resize of the shorter side to 256 and
centre crop to 224), so differences come from decoding alone. Times are the
median over ``--repeats`` runs, one thread, file already in the page cache:
*decode* is file to RGB image, *to crop* adds the resize and crop, and the
speedup compares *to crop* with ``pillow``'s for the same file. *mean* and
*max* are the absolute differences of the final 224x224 crop from
``pillow``'s, in 0-255 units.

Usage::

    python benchmarks/bench_decoders.py [--quick] [--repeats 15]
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sktransfer._images import _draft_size, read_rgb_image
from sktransfer._transforms import Preprocessing, crop_transform

SIZES = ((640, 480), (2048, 1536), (4000, 3000))
MIN_SIDE = 256
PREP = Preprocessing(
    resize_size=MIN_SIDE, crop_size=224,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
)


def make_photo(width, height, seed=0):
    """A deterministic photo-like RGB image: gradients, waves, shapes, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= height
    xx /= width
    base = rng.uniform(40, 200, 3).astype(np.float32)
    slope = rng.uniform(-80, 80, (2, 3)).astype(np.float32)
    arr = np.empty((height, width, 3), np.float32)
    for c in range(3):
        freq = rng.uniform(3, 12, 2)
        arr[..., c] = (
            base[c] + slope[0, c] * xx + slope[1, c] * yy
            + 25 * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + c)
        )
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    scale = min(width, height)
    for _ in range(12):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.05, 0.3, 2) * scale
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (x0, y0, x0 + w, y0 + h)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    out = np.asarray(img, dtype=np.float32)
    out += rng.normal(0, 6, out.shape).astype(np.float32)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def make_files(folder, sizes):
    """``{(format, size): path}`` for a JPEG (quality 90) and a PNG per size."""
    files = {}
    for i, (w, h) in enumerate(sizes):
        img = make_photo(w, h, seed=i)
        for fmt, ext, kwargs in (("JPEG", "jpg", {"quality": 90}),
                                 ("PNG", "png", {"compress_level": 6})):
            path = Path(folder) / f"photo_{w}x{h}.{ext}"
            img.save(path, fmt, **kwargs)
            files[fmt, (w, h)] = path
    return files


def _pillow_scale(size):
    """The reduction Pillow's draft picks for ``min_side``: 1, 2, 4 or 8."""
    draft = _draft_size(size, MIN_SIDE)
    ratio = min(size[0] // draft[0], size[1] // draft[1])
    return next(s for s in (8, 4, 2, 1) if ratio >= s)


def pillow_decoder(fmt):
    def decode(path):
        with open(path, "rb") as fp:
            return read_rgb_image(fp, path, min_side=MIN_SIDE)
    return decode


def simplejpeg_decoder(fmt, same_scale=True):
    if fmt != "JPEG":
        return None
    import simplejpeg

    def decode(path):
        data = Path(path).read_bytes()
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        if same_scale:
            s = _pillow_scale((w, h))
            min_w, min_h = -(-w // s), -(-h // s)
        else:
            min_w, min_h = _draft_size((w, h), MIN_SIDE)
        arr = simplejpeg.decode_jpeg(data, "RGB", min_height=min_h, min_width=min_w)
        return Image.fromarray(arr)
    return decode


def turbojpeg_decoder(fmt):
    if fmt != "JPEG":
        return None
    from turbojpeg import TJPF_RGB, TurboJPEG
    jpeg = TurboJPEG()

    def decode(path):
        data = Path(path).read_bytes()
        w, h, _, _ = jpeg.decode_header(data)
        s = _pillow_scale((w, h))
        arr = jpeg.decode(data, pixel_format=TJPF_RGB, scaling_factor=(1, s))
        return Image.fromarray(arr)
    return decode


def torchvision_decoder(fmt):
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png, read_file

    fn = decode_jpeg if fmt == "JPEG" else decode_png

    def decode(path):
        tensor = fn(read_file(str(path)), mode=ImageReadMode.RGB)
        return Image.fromarray(tensor.permute(1, 2, 0).numpy())
    return decode


DECODERS = {
    "pillow": pillow_decoder,
    "simplejpeg": simplejpeg_decoder,
    "simplejpeg n/8": lambda fmt: simplejpeg_decoder(fmt, same_scale=False),
    "turbojpeg": turbojpeg_decoder,
    "torchvision": torchvision_decoder,
}


def _build(name, fmt):
    """``(decode, None)``, ``(None, reason)``, or ``(None, None)`` if n/a."""
    try:
        decode = DECODERS[name](fmt)
    except ImportError:
        return None, "not installed"
    except (OSError, RuntimeError) as exc:  # e.g. a missing shared library
        return None, f"not usable ({str(exc).splitlines()[0]})"
    return decode, None


def _time_ms(fn):
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1e3, out


def _bench_file(path, decoders, repeats):
    """Median decode and decode-to-crop times per decoder, taken in turn.

    Each repeat runs every decoder once (round robin), so a change in the
    machine's load hits all of them alike.
    """
    crop = crop_transform(PREP)
    times = {name: ([], []) for name in decoders}
    outputs = {}
    for name, decode in decoders.items():
        decode(path)  # warm up: imports, page cache
    for _ in range(repeats):
        for name, decode in decoders.items():
            decode_ms, img = _time_ms(lambda: decode(path))
            total_ms, out = _time_ms(lambda: crop(decode(path)))
            times[name][0].append(decode_ms)
            times[name][1].append(total_ms)
            outputs[name] = img.size, out.numpy().astype(np.int16)
    return {
        name: (statistics.median(d), statistics.median(t), *outputs[name])
        for name, (d, t) in times.items()
    }


def bench(files, repeats):
    rows = []
    for fmt in ("JPEG", "PNG"):
        for size in sorted({s for f, s in files if f == fmt}):
            decoders, notes = {}, {}
            for name in DECODERS:
                decode, reason = _build(name, fmt)
                if decode is not None:
                    decoders[name] = decode
                elif reason is not None:
                    notes[name] = reason
            results = _bench_file(files[fmt, size], decoders, repeats)
            _, ref_ms, _, ref_out = results["pillow"]
            for name in DECODERS:
                row = {"decoder": name, "format": fmt, "mp": size[0] * size[1] / 1e6}
                if name in notes:
                    rows.append(dict(row, note=notes[name]))
                if name not in results:
                    continue
                decode_ms, total_ms, decoded, out = results[name]
                diff = np.abs(out - ref_out)
                rows.append(dict(
                    row, decoded=f"{decoded[0]}x{decoded[1]}",
                    decode_ms=decode_ms, total_ms=total_ms,
                    speedup=ref_ms / total_ms,
                    mean=float(diff.mean()), max=int(diff.max()),
                ))
            print(f"  {fmt} {size[0]}x{size[1]} done", file=sys.stderr, flush=True)
    return rows


def print_table(rows):
    print("| decoder | format | MP | decoded at | decode ms | to crop ms "
          "| speedup | mean diff | max diff |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        head = f"| {r['decoder']} | {r['format']} | {r['mp']:.1f} "
        if "note" in r:
            print(head + f"| {r['note']} | | | | | |")
            continue
        print(head + f"| {r['decoded']} | {r['decode_ms']:.2f} | {r['total_ms']:.2f} "
              f"| {r['speedup']:.2f}x | {r['mean']:.3f} | {r['max']} |")


def _versions():
    from PIL import features

    names = {"Pillow": "PIL", "simplejpeg": "simplejpeg", "PyTurboJPEG": "turbojpeg",
             "torchvision": "torchvision"}
    out = []
    for label, module in names.items():
        try:
            mod = __import__(module)
            out.append(f"{label} {getattr(mod, '__version__', '?')}")
        except ImportError:
            continue
    turbo = features.version("libjpeg_turbo")
    if turbo:
        out[0] += f" (libjpeg-turbo {turbo})"
    return ", ".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true",
                        help="3 repeats, 0.3 and 3 MP only")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    sizes = SIZES[:2] if args.quick else SIZES
    torch.set_num_threads(1)
    load = os.getloadavg()
    print(f"{_versions()}; 1 thread, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), load average "
          f"{load[0]:.1f} at start; median of {repeats}; min_side={MIN_SIDE}, "
          f"crop {PREP.crop_size}\n")
    with tempfile.TemporaryDirectory(prefix="sktransfer-bench-decoders-") as folder:
        print("generating images ...", file=sys.stderr, flush=True)
        files = make_files(folder, sizes)
        print_table(bench(files, repeats))


if __name__ == "__main__":
    main()
