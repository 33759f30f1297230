"""An extraction interrupted over an on-disk cache resumes where it stopped."""

import numpy as np
import pytest

from sktransfer import PretrainedFeatureExtractor, _frozen, clear_feature_cache


def _counting(run, computed, stop_after=None):
    """``_run_frozen`` that records the images it computes, and may stop."""
    def wrapped(*args, **kwargs):
        for n_batches, batch in enumerate(run(*args, **kwargs)):
            if stop_after is not None and n_batches == stop_after:
                raise KeyboardInterrupt
            computed.extend(batch[0])
            yield batch
    return wrapped


def test_interrupted_extraction_resumes_from_the_disk_cache(colour_images,
                                                            tmp_path, monkeypatch):
    X, _ = colour_images  # 24 images, batches of 4
    params = dict(backbone="tiny_cnn", weights=None, random_state=0, device="cpu",
                  num_workers=0, batch_size=4, precision="fp32")
    expected = PretrainedFeatureExtractor(**params, cache=False).fit(X).transform(X)

    run = _frozen._run_frozen
    first = []
    monkeypatch.setattr(_frozen, "_run_frozen", _counting(run, first, stop_after=3))
    extractor = PretrainedFeatureExtractor(**params, cache=tmp_path).fit(X)
    with pytest.raises(KeyboardInterrupt):
        extractor.transform(X)
    assert len(first) == 12  # three batches written before the interruption

    # A new process: nothing in memory, the disk cache holds what was done.
    clear_feature_cache()
    second = []
    monkeypatch.setattr(_frozen, "_run_frozen", _counting(run, second))
    resumed = PretrainedFeatureExtractor(**params, cache=tmp_path).fit(X)
    np.testing.assert_allclose(resumed.transform(X), expected, atol=1e-6)
    assert sorted(second) == sorted(set(range(24)) - set(first))
