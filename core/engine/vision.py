"""cnn_learner [fastai: cnn_learner / vision_learner, unet_learner]: data + architecture name + pretrained
source in, a Learner with a cut body, a new head (a classifier's, or a U-Net decoder for segmentation
data) and the layer groups out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.architectures import get_architecture
from core.engine.data import DataConfig, ImageDataLoaders
from core.engine.labelling import LabelledItems
from core.engine.learner import Callback, Learner
from core.engine.masks import IGNORE_INDEX
from core.engine.metrics import Metric
from core.engine.model import HeadConfig, TargetScale, create_cnn_model
from core.engine.pretrained import load_body
from core.engine.unet import DynamicUnet, UnetConfig


def training_targets(dls: ImageDataLoaders, max_items: int = 512) -> torch.Tensor:
    """Regression targets of (up to max_items of) the training set, as the model sees them (points in
    [-1, 1] after the resize, values as given), without augmentation."""
    ds = dls.train.dataset
    step = max(1, len(ds) // max_items)
    if dls.task == "values":
        assert dls.items.targets is not None
        return torch.tensor([dls.items.targets[ds.indices[i]] for i in range(0, len(ds), step)])
    return torch.stack([ds[i][1] for i in range(0, len(ds), step)])


class MaskedCrossEntropy(nn.Module):
    """Per-pixel cross-entropy averaged over the non-void pixels [fastai: CrossEntropyLossFlat(axis=1)
    with ignore_index]; a batch whose pixels are all void gives 0, not NaN."""

    def forward(self, preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
        total = F.cross_entropy(preds, targs, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (targs != IGNORE_INDEX).sum().clamp_min(1)


def cnn_learner(
    items: LabelledItems,
    arch: str,
    config: DataConfig,
    pretrained: str | Path | None = "imagenet",
    metrics: Sequence[Metric] = (),
    cbs: Iterable[Callback] = (),
    device: torch.device | str = "cpu",
    loss_func: torch.nn.Module | None = None,
    head: HeadConfig | None = None,
) -> tuple[Learner, str]:
    """A learner on `items`, frozen when the body is pretrained, and where the body's weights came from.
    A pretrained body gets the normalization it was trained with; one from scratch, the data's own."""
    architecture = get_architecture(arch)
    torch.manual_seed(config.seed)
    loaded = load_body(architecture, pretrained)
    dls = ImageDataLoaders(items, config, stats=loaded.stats, device=device)
    head = head or HeadConfig()
    model: nn.Module
    if items.task == "segmentation":  # [fastai: unet_learner]
        model = DynamicUnet(loaded.body, dls.n_out)
        loss_func = loss_func or MaskedCrossEntropy()
    else:
        if items.task in ("points", "values"):  # regression learns standardized targets
            head = dataclasses.replace(head, target_scale=True)
        model = create_cnn_model(architecture, dls.n_out, loaded.body, head)
        if head.target_scale:
            scale = list(model[1].children())[-1]
            assert isinstance(scale, TargetScale)
            scale.set_stats(training_targets(dls))
    # Multi-label: a sigmoid per class with binary cross-entropy; regression: MSE (or what was given).
    loss = loss_func or {
        "multilabel": torch.nn.BCEWithLogitsLoss(),
        "points": torch.nn.MSELoss(),
        "values": torch.nn.MSELoss(),
    }.get(items.task)
    learn = Learner(dls, model, loss_func=loss, metrics=metrics, arch=architecture, cbs=cbs)
    learn.head_config = UnetConfig() if items.task == "segmentation" else head
    if loaded.stats is not None:  # pretrained: stage 1 trains the head first
        learn.freeze()
    return learn, loaded.source
