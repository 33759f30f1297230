import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from sktransfer._augment import (
    AUGMENT_CONSTRAINT,
    POLICIES,
    check_augment,
    resolve_policy,
    tta_average,
    tta_views,
)
from sktransfer._compat import StrOptions
from sktransfer._decoded import store_transform
from sktransfer._transforms import Preprocessing, eval_transform

PREP = Preprocessing(
    resize_size=36, crop_size=32, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3)
)


def _stored(seed=0, side=36):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=g)


def _eval_of(image):
    return tta_views(False, PREP)[0](image)


@pytest.mark.parametrize("augment", [True, *POLICIES])
def test_policy_output_shape_dtype(augment):
    out = resolve_policy(augment, PREP)(_stored())
    assert out.shape == (3, 32, 32)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("augment", [True, *POLICIES])
def test_policy_changes_images_randomly(augment):
    policy = resolve_policy(augment, PREP)
    image = _stored()
    outs = [policy(image) for _ in range(8)]
    # Random: draws differ from each other and from the plain eval view.
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert any(not torch.equal(_eval_of(image), o) for o in outs)


def test_policy_seeded_draws_repeat():
    policy = resolve_policy("classic", PREP)
    image = _stored()
    torch.manual_seed(3)
    a = policy(image)
    torch.manual_seed(3)
    assert torch.equal(a, policy(image))


def test_no_augmentation_is_none_and_eval_view_is_deterministic():
    assert resolve_policy(False, PREP) is None
    view = tta_views(False, PREP)[0]
    image = _stored()
    assert torch.equal(view(image), view(image))


def test_store_does_not_change():
    image = _stored()
    before = image.clone()
    for augment in POLICIES:
        resolve_policy(augment, PREP)(image)
    assert torch.equal(image, before)


@pytest.mark.parametrize("size", [(40, 30), (30, 40), (36, 36), (81, 50), (20, 17)])
def test_eval_view_of_stored_image_equals_eval_transform(size):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pil = Image.fromarray(arr)
    expected = eval_transform(PREP)(pil)
    got = _eval_of(store_transform(PREP)(pil))
    # Centre crop of the centre square can be one pixel off the direct
    # centre crop when the offsets round differently; these sizes do not.
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_user_transform_receives_stored_uint8_and_is_finished():
    seen = {}

    def spy(image):
        seen["shape"], seen["dtype"] = tuple(image.shape), image.dtype
        return image

    out = resolve_policy(spy, PREP)(_stored())
    assert seen == {"shape": (3, 36, 36), "dtype": torch.uint8}
    # A transform that changes nothing yields exactly the eval view.
    assert torch.equal(out, _eval_of(_stored()))


def test_user_v2_transform():
    policy = resolve_policy(v2.RandomVerticalFlip(p=1.0), PREP)
    image = _stored()
    assert torch.equal(policy(image), _eval_of(image.flip(-2)))


def test_unknown_policy_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'classic'") as info:
        resolve_policy("clasic", PREP)
    assert "'light'" in str(info.value)
    with pytest.raises(TypeError, match="augment must be"):
        check_augment(3)
    assert check_augment("light") == "light"


def test_constraint_accepts_every_valid_value():
    from sklearn.utils._param_validation import make_constraint

    constraints = [make_constraint(c) for c in AUGMENT_CONSTRAINT]
    for value in (False, True, *POLICIES, v2.RandomHorizontalFlip()):
        assert any(c.is_satisfied_by(value) for c in constraints), value
    assert not any(c.is_satisfied_by("clasic") for c in constraints)
    assert any(isinstance(c, StrOptions) for c in AUGMENT_CONSTRAINT)


def test_policies_take_batches():
    batch = torch.stack([_stored(i) for i in range(4)])
    assert resolve_policy("classic", PREP)(batch).shape == (4, 3, 32, 32)


# -- test-time augmentation --------------------------------------------------


def test_tta_view_counts():
    assert len(tta_views(False, PREP)) == 1
    assert len(tta_views(True, PREP)) == 2
    assert len(tta_views("flip", PREP)) == 2
    views = tta_views("crops", PREP)
    assert len(views) == 10
    outs = [v(_stored()) for v in views]
    assert all(o.shape == (3, 32, 32) for o in outs)
    # Ten distinct views of a random image.
    assert len({o.numpy().tobytes() for o in outs}) == 10
    with pytest.raises(ValueError, match="Did you mean 'flip'"):
        tta_views("flp", PREP)


def test_flip_view_is_the_flipped_centre():
    centre, flipped = tta_views("flip", PREP)
    image = _stored()
    assert torch.equal(flipped(image), centre(image).flip(-1))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()


def test_averaging_a_repeated_view_is_the_single_view():
    model = _model()
    images = torch.stack([_stored(i) for i in range(3)])
    view = tta_views(False, PREP)[0]
    with torch.no_grad():
        single = torch.softmax(model(view(images)), dim=1)
        twice = tta_average(model, images, [view, view])
    torch.testing.assert_close(twice, single)
    torch.testing.assert_close(twice.sum(dim=1), torch.ones(3))


def test_flip_tta_on_symmetric_image_equals_no_tta():
    model = _model()
    half = torch.stack([_stored(i) for i in range(2)])[..., :18]
    images = torch.cat([half, half.flip(-1)], dim=-1)  # mirror-symmetric
    with torch.no_grad():
        plain = tta_average(model, images, tta_views(False, PREP))
        flip = tta_average(model, images, tta_views("flip", PREP))
    torch.testing.assert_close(flip, plain)


def test_tta_average_of_probabilities():
    images = torch.stack([_stored(i) for i in range(2)])
    views = tta_views("flip", PREP)
    calls = iter([torch.tensor([[1.0, 0.0]] * 2), torch.tensor([[0.0, 1.0]] * 2)])
    proba = tta_average(lambda x: next(calls), images, views, output="proba")
    torch.testing.assert_close(proba, torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="views is empty"):
        tta_average(lambda x: x, images, [])
