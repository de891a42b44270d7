"""Labelled images for classification: scikit-learn's bundled 8x8 digits (no download), or any
image data set that Hugging Face ``datasets`` can open (MNIST from the hub, or a local folder).

Images are stored once as a float tensor (N,C,H,W) scaled to [0,1] and normalised by the training
set's mean and standard deviation; labels (N,). Training batches are drawn with replacement by a
generator seeded from (seed, step, rank), so a batch is a pure function of them; the test split is
fixed and serves as the validation set.
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

import parallax

from .hub import open_dataset


class ImageData(parallax.DataSource):
    """The shared machinery; subclasses fill ``_load() -> (train_x, train_y, test_x, test_y)``."""

    has_accuracy = True

    def __init__(self, cfg, seed: int, batch_size: int = 32):
        super().__init__(cfg, seed, batch_size)
        tx, ty, vx, vy = self._load()  # (N,C,H,W) float in [0,1], (N,) int
        mean, std = tx.mean(), tx.std().clamp_min(1e-6)
        self.train_x, self.train_y = (tx - mean) / std, ty
        self.background = (0.0 - mean) / std  # a blank pixel, after normalisation
        self.val_x, self.val_y = (vx - mean) / std, vy
        self.num_classes = int(max(ty.max(), vy.max())) + 1

    def _load(self):
        raise NotImplementedError

    @property
    def info(self) -> parallax.DataInfo:
        return parallax.DataInfo(num_classes=self.num_classes, input_shape=tuple(self.train_x.shape[1:]))

    def batch(self, step: int, rank: int = 0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(hash((self.seed, step, rank)) & 0x7FFFFFFF)
        idx = torch.randint(0, len(self.train_y), (self.batch_size,), generator=gen)  # (B,)
        x = self.train_x[idx]  # (B,C,H,W)
        s = self.cfg.shift
        if s:
            # translate each image by up to s pixels, filling with the background (pixel value 0)
            B, C, H, W = x.shape
            pad = torch.nn.functional.pad(x, (s, s, s, s), value=float(self.background))  # (B,C,H+2s,W+2s)
            dy, dx = torch.randint(0, 2 * s + 1, (2, B), generator=gen)
            x = torch.stack([pad[b, :, dy[b] : dy[b] + H, dx[b] : dx[b] + W] for b in range(B)])  # (B,C,H,W)
        return {"inputs": x, "targets": self.train_y[idx]}

    def val_batches(self, batch_size: int | None = None):
        bs = batch_size or self.batch_size
        for i in range(0, len(self.val_y), bs):
            yield {"inputs": self.val_x[i : i + bs], "targets": self.val_y[i : i + bs]}


class DigitsData(ImageData):
    """scikit-learn's 1,797 bundled 8x8 handwritten digits, with a fixed stratified train/test split."""

    class Config(parallax.Spec):
        type: str = "digits"
        test_fraction: float = Field(0.2, gt=0, lt=1, description="share of the images held out as the test set")
        split_seed: int = Field(0, description="fixes the train/test split independently of the run's seed")
        shift: int = Field(0, ge=0, description="augmentation: translate training images by up to this many pixels")

    def _load(self):
        try:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        except ImportError:
            raise parallax.ConfigError(
                "data.type: 'digits' needs scikit-learn; pip install 'parallax-cws[vision]'") from None
        d = load_digits()
        # the data lives on the CPU even when built inside a device context (validate uses "meta")
        x = torch.tensor(d.images / 16.0, dtype=torch.float32, device="cpu")[:, None]  # (N,1,8,8) in [0,1]
        y = torch.tensor(d.target, dtype=torch.long, device="cpu")  # (N,)
        tr, te = train_test_split(np.arange(len(y)), test_size=self.cfg.test_fraction,
                                  random_state=self.cfg.split_seed, stratify=d.target)
        return x[tr], y[tr], x[te], y[te]


class HubImageData(ImageData):
    """An image classification data set through ``datasets``: a hub id (``mnist``) or a local folder."""

    class Config(parallax.Spec):
        type: str = "hf_images"
        dataset: str = Field("mnist", description="hub id, or a local folder that datasets.load_dataset reads")
        train_split: str = "train"
        test_split: str = "test"
        image_field: str = "image"
        label_field: str = "label"
        max_train: int = Field(20000, ge=1, description="training images read (streamed)")
        max_test: int = Field(2000, ge=1, description="test images read (streamed)")
        shift: int = Field(0, ge=0, description="augmentation: translate training images by up to this many pixels")

    def _read(self, split: str, limit: int):
        c = self.cfg
        fix = "use data.type=digits (bundled with scikit-learn), or a local copy: data.dataset=FOLDER"
        ds = open_dataset(c.dataset, split, "data.dataset", fix)
        xs, ys = [], []
        for i, rec in enumerate(ds):
            if i >= limit:
                break
            if c.image_field not in rec or c.label_field not in rec:
                raise parallax.ConfigError(
                    f"data.image_field: '{c.dataset}' records have fields {sorted(rec)}; "
                    "set data.image_field and data.label_field"
                )
            xs.append(np.asarray(rec[c.image_field], dtype=np.float32))
            ys.append(int(rec[c.label_field]))
        if not xs:
            raise parallax.ConfigError(f"data.dataset: split '{split}' of '{c.dataset}' is empty")
        shapes = {a.shape for a in xs}
        if len(shapes) > 1:
            raise parallax.ConfigError(f"data.dataset: '{c.dataset}' images differ in shape ({sorted(shapes)[:3]}); "
                                       "the image encoder needs one shape")
        x = torch.from_numpy(np.stack(xs))
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N,C,H,W) from (N,H,W) or (N,H,W,C)
        scale = 255.0 if float(x.max()) > 1.0 else 1.0
        return x / scale, torch.tensor(ys, dtype=torch.long, device="cpu")

    def _load(self):
        tx, ty = self._read(self.cfg.train_split, self.cfg.max_train)
        vx, vy = self._read(self.cfg.test_split, self.cfg.max_test)
        return tx, ty, vx, vy
