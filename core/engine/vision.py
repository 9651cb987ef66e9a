"""cnn_learner [fastai: cnn_learner / vision_learner, unet_learner]: data + architecture name + pretrained
source in, a Learner with a cut body, the task's head (a classifier's, or a U-Net decoder for segmentation)
and the layer groups out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from core.engine.architectures import get_architecture
from core.engine.data import DataConfig, ImageDataLoaders
from core.engine.events import Callback
from core.engine.items import LabelledItems
from core.engine.learner import Learner
from core.engine.metrics import Metric
from core.engine.model import HeadConfig
from core.engine.pretrained import load_body


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
    A pretrained body gets the normalization it was trained with; one from scratch, the data's own. The
    loss is the task's unless one is given."""
    architecture = get_architecture(arch)
    torch.manual_seed(config.seed)
    loaded = load_body(architecture, pretrained)
    dls = ImageDataLoaders(items, config, stats=loaded.stats, device=device)
    model, head_config = dls.task.build_model(
        architecture, loaded.body, dls, head or HeadConfig(ps=dls.task.head_dropout)
    )
    learn = Learner(dls, model, loss_func=loss_func, metrics=metrics, arch=architecture, cbs=cbs)
    learn.head_config = head_config
    if loaded.stats is not None:  # pretrained: stage 1 trains the head first
        learn.freeze()
    return learn, loaded.source
