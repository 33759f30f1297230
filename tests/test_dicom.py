"""DICOM files through pydicom: rescale, windows, MONOCHROME1, multi-frame,
and files without usable pixels reported as bad images."""

import shutil
import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", minversion="3.0")

from pydicom.data import get_testdata_file  # noqa: E402

from sktransfer import PretrainedCNNClassifier, PretrainedFeatureExtractor  # noqa: E402
from sktransfer._dicom import import_pydicom  # noqa: E402
from sktransfer._folder import load_image_folder  # noqa: E402
from sktransfer._images import (  # noqa: E402
    BadImagesError,
    ImageLoadError,
    check_image_header,
    load_rgb_image,
)


def _grey(path, intensity="auto"):
    return np.asarray(load_rgb_image(path, intensity=intensity))[:, :, 0]


def _window(values, low, high):
    scaled = np.rint((values - low) * (255.0 / (high - low)))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _modality_values(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    slope = float(ds.get("RescaleSlope", 1))
    intercept = float(ds.get("RescaleIntercept", 0))
    return ds, ds.pixel_array.astype(np.float64) * slope + intercept


def test_auto_applies_the_header_window():
    ds, values = _modality_values("MR_small.dcm")
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)  # 600, 1600
    expected = _window(values, center - width / 2, center + width / 2)
    np.testing.assert_array_equal(_grey(get_testdata_file("MR_small.dcm")), expected)


def test_auto_without_a_window_uses_bits_stored_after_rescale():
    ds, values = _modality_values("CT_small.dcm")  # signed 16 bits, -1024 HU
    assert "WindowCenter" not in ds and ds.RescaleIntercept == -1024
    expected = _window(values, -32768 - 1024, 32767 - 1024)
    np.testing.assert_array_equal(_grey(get_testdata_file("CT_small.dcm")), expected)


def test_a_window_is_in_hounsfield_units():
    _, values = _modality_values("CT_small.dcm")
    grey = _grey(get_testdata_file("CT_small.dcm"), (-100, 300))
    np.testing.assert_array_equal(grey, _window(values, -100, 300))


def test_minmax_stretches_the_modality_values():
    grey = _grey(get_testdata_file("CT_small.dcm"), "minmax")
    assert grey.min() == 0 and grey.max() == 255


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    normal = _grey(get_testdata_file("MR_small.dcm"))
    np.testing.assert_array_equal(_grey(path), 255 - normal)


def test_a_multi_frame_file_gives_its_first_frame():
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    assert int(ds.NumberOfFrames) > 1
    frame = ds.pixel_array[0].astype(np.float64)
    grey = _grey(get_testdata_file("rtdose.dcm"), "minmax")
    np.testing.assert_array_equal(grey, _window(frame, frame.min(), frame.max()))


def test_compressed_files_decode_with_the_bundled_decoders():
    # RLE is decoded by pydicom itself.
    np.testing.assert_array_equal(
        _grey(get_testdata_file("MR_small_RLE.dcm")),
        _grey(get_testdata_file("MR_small.dcm")),
    )


def test_a_dicom_without_pixel_data_is_a_bad_image():
    path = get_testdata_file("rtplan.dcm")
    for check in (load_rgb_image, check_image_header):
        with pytest.raises(ImageLoadError, match="no pixel data .*RTPLAN"):
            check(path)


def test_an_undecodable_compression_is_a_bad_image():
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder plugin is installed")
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    for check in (load_rgb_image, check_image_header):
        with pytest.raises(ImageLoadError, match="JPEG-LS.*cannot be decoded"):
            check(path)


def test_without_pydicom_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"sktransfer\[medical\]"):
        import_pydicom()


@pytest.fixture
def dicom_folder(tmp_path):
    for label, name in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        (tmp_path / label).mkdir()
        for i in range(3):
            shutil.copy(get_testdata_file(name), tmp_path / label / f"{i}.dcm")
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "ct" / "plan.dcm")
    return tmp_path


def test_the_folder_walker_and_the_estimators_take_dicom(dicom_folder):
    X, y = load_image_folder(dicom_folder)
    assert len(X) == 7 and all(p.endswith(".dcm") for p in X)
    params = dict(
        backbone="tiny_cnn", weights=None, random_state=0, device="cpu", num_workers=0
    )
    with pytest.raises(BadImagesError, match="plan.dcm: DICOM file has no pixel"):
        PretrainedFeatureExtractor(**params).fit(X).transform(X)
    with pytest.warns(UserWarning, match="Skipped 1 of 7"):
        clf = PretrainedCNNClassifier(
            **params, max_epochs=1, batch_size=2, on_bad_image="skip"
        ).fit(X, y)
    good = [p for p in X if not p.endswith("plan.dcm")]
    assert clf.predict(good).shape == (6,)
