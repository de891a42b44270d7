"""The image modality: raster-order patches, the patch-size check, the classifier decoder, and the
image data sources (scikit-learn digits, and a ``datasets`` folder through the hub code path)."""
from __future__ import annotations

import json

import pytest
import torch

import parallax
from parallax.cli.main import main
from parallax_plugins.classifier import ClassifierDecoder
from parallax_plugins.data.images import DigitsData, HubImageData
from parallax_plugins.image_encoder import ImageEncoder, patchify


def test_patchify_is_raster_order():
    img = torch.arange(16.0).view(1, 1, 4, 4)
    p = patchify(img, 2)  # (1,4,4)
    assert p.shape == (1, 4, 4)
    assert p[0, 0].tolist() == [0, 1, 4, 5]  # top-left
    assert p[0, 1].tolist() == [2, 3, 6, 7]  # top-right comes next
    assert p[0, 2].tolist() == [8, 9, 12, 13]


def test_encoder_shapes_and_patch_check():
    info = parallax.DataInfo(num_classes=10, input_shape=(1, 8, 8))
    enc = ImageEncoder(ImageEncoder.Config(patch=4), 16, info)
    assert enc(torch.randn(3, 1, 8, 8)).shape == (3, 4, 16)
    with pytest.raises(parallax.ConfigError,
                       match=r"model.encoder.patch: 8x8 images do not split into 3x3 patches.*\(1, 2, 4, 8\)"):
        ImageEncoder(ImageEncoder.Config(patch=3), 16, info)


def test_patch_mismatch_is_one_line_from_the_cli(capsys, tmp_path):
    assert main(["run", "recipes/digits.yaml", "model.encoder.patch=3", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("parallax: error: model.encoder.patch:")


def test_validate_builds_the_digits_recipe(capsys):
    assert main(["validate", "recipes/digits.yaml"]) == 0
    assert "valid (cws model, digits data)" in capsys.readouterr().out


def test_classifier_pools():
    info = parallax.DataInfo(num_classes=5)
    h = torch.randn(2, 6, 16)
    mean = ClassifierDecoder(ClassifierDecoder.Config(pool="mean", hidden=0), 16, info)
    assert mean(h).shape == (2, 5)
    last = ClassifierDecoder(ClassifierDecoder.Config(pool="last", hidden=0), 16, info)
    h2 = h.clone()
    h2[:, :-1] = 0
    assert torch.allclose(last(h), last(h2))  # reads only the last position
    assert not torch.allclose(mean(h), mean(h2))


def test_digits_split_is_fixed_and_batches_are_pure():
    a = DigitsData(DigitsData.Config(shift=1), seed=0, batch_size=8)
    b = DigitsData(DigitsData.Config(shift=1), seed=3, batch_size=8)
    assert a.info.num_classes == 10 and a.info.input_shape == (1, 8, 8)
    assert len(a.val_y) == 360 and torch.equal(a.val_y, b.val_y)  # 20% of 1,797, stratified, seed-independent
    assert torch.equal(a.batch(4)["inputs"], a.batch(4)["inputs"])
    assert not torch.equal(a.batch(4)["inputs"], a.batch(5)["inputs"])


def test_hub_images_from_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for split, n in (("train", 12), ("test", 4)):
        rows = [{"image": [[(i + r + c) % 256 for c in range(4)] for r in range(4)], "label": i % 3} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = HubImageData(HubImageData.Config(dataset=str(folder)), seed=0, batch_size=4)
    assert data.info.input_shape == (1, 4, 4) and data.info.num_classes == 3
    assert len(data.val_y) == 4 and data.batch(1)["inputs"].shape == (4, 1, 4, 4)
