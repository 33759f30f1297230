"""timm vision transformers cut into blocks, and timm's own eval preprocessing."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sktransfer import PretrainedCNNClassifier, get_backbone
from sktransfer._transforms import eval_transform
from sktransfer.backbones._timm import timm_eval_config, timm_preprocessing
from sktransfer.backbones._timm_tokens import TokenEmbedding, TokenPool

timm = pytest.importorskip("timm")

# (model, blocks: token embedding + transformer blocks, or stem + stages)
FAMILIES = [
    ("test_vit", 7),  # ViT, class token
    ("test_vit3", 10),  # ViT, register tokens, average pooling, fc_norm
    ("deit_tiny_distilled_patch16_224", 13),  # class and distillation tokens
    ("eva02_tiny_patch14_224", 13),  # rotary position embeddings
    ("swin_tiny_patch4_window7_224", 5),  # hierarchical: one block a stage
]


def _fast_params(**kwargs):
    params = dict(
        max_epochs=2, lr=0.05, batch_size=8, random_state=0, device="cpu",
        num_workers=0, precision="fp32", weights=None,
    )
    params.update(kwargs)
    return params


@pytest.mark.parametrize(("name", "n_blocks"), FAMILIES)
def test_transformer_blocks_reproduce_the_model(name, n_blocks):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    torch.manual_seed(0)
    spec = get_backbone(f"timm/{name}")
    parts = spec.build(None)
    assert len(parts.blocks) == spec.n_blocks == n_blocks
    size = parts.preprocessing.crop_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    pieces = [*parts.blocks, parts.neck]
    for piece in pieces:
        piece.eval()
    with torch.no_grad():
        expected = model(x)
        got = parts.neck(nn.Sequential(*parts.blocks)(x))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert parts.feature_dim == expected.shape[1]
    # Every parameter of the model lies in exactly one block or the neck.
    owned = [p for piece in pieces for p in piece.parameters()]
    assert len({id(p) for p in owned}) == len(owned)
    assert sum(p.numel() for p in owned) == sum(p.numel() for p in model.parameters())


def test_vit_prefix_is_the_token_embedding_and_neck_the_pooling():
    parts = get_backbone("timm/test_vit3").build(None)
    embedding, neck = parts.blocks[0], parts.neck
    assert isinstance(embedding, TokenEmbedding) and isinstance(neck, TokenPool)
    model = timm.create_model("test_vit3", num_classes=0)
    with torch.no_grad():
        tokens = embedding(torch.zeros(1, 3, 160, 160))
    # Patches plus the class and register tokens, position embeddings added.
    n_tokens = (160 // 16) ** 2 + model.num_prefix_tokens
    assert tokens.shape == (1, n_tokens, model.embed_dim)
    # Its register tokens (no class token: it averages) and position
    # embeddings are the prefix's.
    assert model.cls_token is None
    prefix_names = {n for n, _ in embedding.named_parameters()}
    assert {"shell.reg_token", "shell.pos_embed"} <= prefix_names
    # The final norm ends the last block; the neck holds only the attention
    # pooling this model uses.
    assert isinstance(parts.blocks[-1].norm, nn.LayerNorm)
    assert {n.split(".")[1] for n, _ in neck.named_parameters()} == {"attn_pool"}


@pytest.mark.parametrize("unfreeze", [0, 2])
def test_vit_classifier_fits_saves_and_loads(colour_images, tmp_path, unfreeze):
    X, y = colour_images
    clf = PretrainedCNNClassifier(
        "timm/test_vit", unfreeze=unfreeze, **_fast_params()
    ).fit(X, y)
    assert clf.n_frozen_blocks_ == 7 - unfreeze
    trainable = sum(p.numel() for p in clf.model_.suffix.trainable.parameters())
    assert (trainable > 0) == (unfreeze > 0)
    # The frozen part ends in tokens while blocks train, else in the embedding.
    with torch.no_grad():
        frozen_out = clf.model_.frozen(torch.zeros(1, 3, 160, 160))
    assert frozen_out.ndim == (3 if unfreeze else 2)
    proba = clf.predict_proba(X)
    clf.save(tmp_path / "vit")
    loaded = PretrainedCNNClassifier.load(tmp_path / "vit")
    np.testing.assert_allclose(loaded.predict_proba(X), proba, atol=1e-6)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(again.predict_proba(X), proba, atol=1e-6)


def test_fixed_size_transformer_refuses_another_image_size(colour_images):
    X, y = colour_images
    clf = PretrainedCNNClassifier(
        "timm/vit_tiny_patch16_224", image_size=64, **_fast_params()
    )
    with pytest.raises(ValueError, match="224x224 images.*image_size=None"):
        clf.fit(X, y)


def test_dynamic_size_transformer_takes_another_image_size(colour_images):
    # test_vit resamples its position embeddings to the token grid.
    X, y = colour_images
    clf = PretrainedCNNClassifier(
        "timm/test_vit", image_size=64, unfreeze=1, **_fast_params()
    ).fit(X, y)
    assert clf.preprocessing_.crop_size == 64
    assert clf.predict(X).shape == (len(X),)


# -- preprocessing from timm's evaluation data config -------------------------


def _photo(width, height):
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = rng.normal(0, 25, (height, width, 3))
    return Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "name",
    [
        "resnet10t",  # test_input_size 224 and test_crop_pct 0.95
        "convnext_atto.d2_in1k",  # test_input_size 288
        "vit_base_patch16_384.augreg_in21k_ft_in1k",  # 384, crop_pct 1.0
        "convnextv2_nano.fcmae_ft_in22k_in1k_384",  # crop_mode squash
        "vit_small_patch14_dinov2.lvd142m",  # 518, crop_pct 1.0
        "deit_tiny_patch16_224.fb_in1k",  # crop_pct 0.875, bicubic
    ],
)
def test_preprocessing_matches_timm_create_transform(name):
    with torch.device("meta"):  # the config only: no weights, no forward
        model = timm.create_model(name, pretrained=False, num_classes=0)
    prep = timm_preprocessing(timm, model, name)
    config = timm_eval_config(timm, model)
    reference = timm.data.create_transform(**config, is_training=False)
    for image in (_photo(640, 480), _photo(300, 500)):
        expected = reference(image)
        got = eval_transform(prep)(image)
        assert got.shape == expected.shape == (3, prep.crop_size, prep.crop_size)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_squash_is_recorded_only_where_used():
    name = "convnextv2_nano.fcmae_ft_in22k_in1k_384"
    prep = get_backbone(f"timm/{name}").build(None).preprocessing
    assert (prep.crop_size, prep.resize_size) == (384, 384)
    assert prep.crop_mode == "squash" and prep.to_dict()["crop_mode"] == "squash"
    centre = get_backbone("timm/test_vit").build(None).preprocessing
    assert centre.crop_mode == "center" and "crop_mode" not in centre.to_dict()


def test_vit_linear_probe_pipeline(colour_images):
    # The user guide's DINOv2 probe, with a small random ViT.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    from sktransfer import PretrainedFeatureExtractor

    X, y = colour_images
    extractor = PretrainedFeatureExtractor(
        "timm/test_vit", weights=None, device="cpu", num_workers=0,
        precision="fp32",
    )
    assert extractor.fit(X).transform(X[:3]).shape == (3, 64)
    probe = make_pipeline(extractor, LogisticRegression(max_iter=1000))
    scores = cross_val_score(probe, X, y, cv=3)
    assert scores.mean() > 0.9  # red against green: separable even at random
