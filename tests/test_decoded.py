import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sktransfer._augment import resolve_policy, tta_views
from sktransfer._decoded import (
    DecodedImages,
    DecodedImagesTooLargeError,
    decoded_nbytes,
)
from sktransfer._images import load_rgb_image
from sktransfer._transforms import Preprocessing, eval_transform

PREP = Preprocessing(
    resize_size=36, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
)


@pytest.fixture
def paths_with_bad(colour_images, tmp_path):
    paths, _ = colour_images
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    paths = list(paths[:6])
    paths.insert(2, str(empty))
    paths.append(str(garbage))
    return np.array(paths, dtype=object)


def test_decoded_shape_and_memory(colour_images):
    paths, _ = colour_images
    decoded = DecodedImages.decode(paths, PREP)
    assert decoded.images.shape == (len(paths), 3, 36, 36)
    assert decoded.images.dtype == torch.uint8
    assert decoded.errors == []
    assert decoded.nbytes == decoded_nbytes(len(paths), PREP) == len(paths) * 3 * 36**2


def test_eval_view_matches_eval_transform(three_class_images):
    paths, _ = three_class_images
    decoded = DecodedImages.decode(paths, PREP)
    view = tta_views(False, PREP)[0]
    for i in (0, 5):
        pil = load_rgb_image(paths[i], min_side=PREP.resize_size)
        torch.testing.assert_close(
            view(decoded.images[i]), eval_transform(PREP)(pil), rtol=0, atol=0
        )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_files_reported_with_index(paths_with_bad, num_workers):
    decoded = DecodedImages.decode(
        paths_with_bad, PREP, num_workers=num_workers, batch_size=3
    )
    assert [i for i, _ in decoded.errors] == [2, 7]
    assert "empty" in decoded.errors[0][1]
    assert decoded.ok.tolist() == [True] * 2 + [False] + [True] * 4 + [False]
    assert decoded.images[2].sum() == 0
    assert decoded.images[3].sum() > 0
    with pytest.raises(ValueError, match="could not be decoded.*2: "):
        decoded.dataset([0, 2, 3])
    assert len(decoded.dataset(np.flatnonzero(decoded.ok))) == 6


def test_workers_give_the_same_store(colour_images):
    paths, _ = colour_images
    a = DecodedImages.decode(paths, PREP, num_workers=0)
    b = DecodedImages.decode(paths, PREP, num_workers=2, batch_size=5)
    assert torch.equal(a.images, b.images)


def test_bound_raises_with_byte_count(colour_images):
    paths, _ = colour_images
    need = decoded_nbytes(len(paths), PREP)
    with pytest.raises(DecodedImagesTooLargeError, match=f"{need:,} bytes") as info:
        DecodedImages.decode(paths, PREP, max_bytes=need - 1)
    assert info.value.n_bytes == need and info.value.max_bytes == need - 1
    assert len(DecodedImages.decode(paths, PREP, max_bytes=need)) == len(paths)


def test_decoding_leaves_the_global_rng_alone(colour_images):
    paths, _ = colour_images
    torch.manual_seed(1)
    expected = torch.rand(1)
    torch.manual_seed(1)
    DecodedImages.decode(paths, PREP)
    assert torch.equal(torch.rand(1), expected)


def test_dataset_items_targets_and_weights(colour_images):
    paths, labels = colour_images
    decoded = DecodedImages.decode(paths, PREP)
    targets = (labels == "red").astype(np.int64)
    weights = np.linspace(0.5, 2.0, len(paths)).astype(np.float32)
    view = tta_views(False, PREP)[0]
    idx = np.array([3, 0, 15])

    plain = decoded.dataset(idx, targets, transform=view)
    x, y = plain[2]
    assert x.shape == (3, 32, 32) and y == targets[15]
    torch.testing.assert_close(x, view(decoded.images[15]))

    weighted = decoded.dataset(idx, targets, transform=view, sample_weight=weights)
    x, y = weighted[1]
    assert set(x) == {"X", "sample_weight"}
    assert x["sample_weight"] == weights[0] and y == targets[0]

    # Row index as the target when no targets are given.
    assert decoded.dataset(idx)[0][1] == 3


def test_getitems_matches_getitem_and_batches(colour_images):
    paths, labels = colour_images
    decoded = DecodedImages.decode(paths, PREP)
    targets = np.arange(len(paths))
    ds = decoded.dataset(np.arange(4, 12), targets, transform=tta_views(False, PREP)[0],
                         sample_weight=np.ones(len(paths), dtype=np.float32))
    batch = ds.__getitems__([0, 5])
    for got, i in zip(batch, [0, 5]):
        torch.testing.assert_close(got[0]["X"], ds[i][0]["X"])
        assert got[1] == ds[i][1]
    X, y = next(iter(DataLoader(ds, batch_size=8)))
    assert X["X"].shape == (8, 3, 32, 32) and X["sample_weight"].shape == (8,)
    assert y.tolist() == list(range(4, 12))


def test_policy_is_random_per_item_and_store_untouched(colour_images):
    paths, _ = colour_images
    decoded = DecodedImages.decode(paths, PREP)
    before = decoded.images.clone()
    ds = decoded.dataset([0], transform=resolve_policy("classic", PREP))
    draws = [ds[0][0] for _ in range(4)] + [ds.__getitems__([0])[0][0]]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])

    def in_place(image):
        return image.zero_()

    decoded.dataset([0, 1], transform=resolve_policy(in_place, PREP))[0]
    assert torch.equal(decoded.images, before)
