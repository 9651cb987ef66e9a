"""What interpretations of every task share: the validation outputs they are computed from (kept from the
last validation pass of a fit, or predicted again), and the validation images of the worst items, loaded again
at the model's size for their picture. Each task's own interpretation lives in its module (tasks/)."""

from __future__ import annotations

import copy
import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from core.engine.distributed import unwrap
from core.engine.events import Callback
from core.engine.heatmap import colour_png, grad_cam, heatmap_layer, on_image
from core.engine.images import open_rgb
from core.engine.transforms import image_to_uint8_tensor, resize_image

if TYPE_CHECKING:
    from core.engine.learner import Learner


@dataclass(frozen=True)
class ValidOutputs:
    """What the task keeps of each validation batch (Task.keep_valid), in loader order, from one whole pass
    of the model in eval mode over the validation set."""

    batches: list[Any]

    def preds_and_targs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept (outputs, targets) batches joined, as Learner.get_preds returns them."""
        preds, targs = zip(*self.batches, strict=True)
        return torch.cat(preds), torch.cat(targs)


def predict_valid(learn: Learner) -> ValidOutputs:
    """A fresh pass over the validation set (eval mode, no gradients, full precision), each batch kept as
    the task keeps it: what interpretation falls back on when no fit left its last pass."""
    loader, keep = learn.dls.valid, learn.dls.task.keep_valid
    learn.model.eval()
    loader.set_epoch(0, 0)
    with torch.no_grad():
        return ValidOutputs([keep(learn.model(xb).float(), yb) for xb, yb in loader])


def preds_and_targs(learn: Learner, outputs: ValidOutputs | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation outputs and targets: the kept ones when given, else predicted again."""
    return outputs.preds_and_targs() if outputs is not None else learn.get_preds()


def _weights_stamp(model: nn.Module) -> int:
    """Changes whenever any parameter or buffer is changed in place (an optimizer step, load_state_dict,
    batch-norm statistics): the sum of their version counters."""
    return sum(t._version for t in model.state_dict(keep_vars=True).values())


class KeepValidOutputs(Callback):
    """Keeps the validation pass of each fit's last epoch, as the task reduces each batch (Task.keep_valid),
    so that thresholds, interpretation and top losses need no second pass over the validation set. The kept
    outputs are handed out (`fresh`) only while they still describe the model and data: a whole pass, in full
    precision (a mixed-precision pass would not give the same numbers as a re-prediction), with the same
    weights and validation loader."""

    order = 55
    run_in_lr_find = False  # the finder's throw-away run restores the model it started from

    def __init__(self) -> None:
        self._outputs: ValidOutputs | None = None
        self._stamp: tuple[weakref.ref[Any], weakref.ref[Any], int] | None = None
        self._batches: list[Any] | None = None
        self._model: weakref.ref[nn.Module] | None = None
        self._n, self._exact = 0, True

    def before_train(self) -> None:
        self._outputs = self._stamp = None  # the weights are about to change

    def before_validate(self) -> None:
        learn = self.learn
        self._batches = [] if learn.epoch == learn.n_epoch - 1 else None
        self._model = weakref.ref(learn.model)  # the model that validates (a distributed fit's plain one)
        self._n, self._exact = 0, True

    def after_loss(self) -> None:  # a batch whose output was computed (after_batch also follows a cancelled one)
        learn = self.learn
        if learn.training or self._batches is None:
            return
        self._exact = self._exact and learn.pred.dtype == torch.float32
        self._batches.append(learn.dls.task.keep_valid(learn.pred.detach().float(), learn.yb.detach()))
        self._n += len(learn.yb)

    def after_cancel_validate(self) -> None:
        self._batches = None

    def after_oom_backoff(self) -> None:  # a validation batch ran again in micro-batches: some of it is kept twice
        if not self.learn.training:
            self._batches = None

    def after_validate(self) -> None:
        learn, batches = self.learn, self._batches
        self._batches = None
        model = self._model() if self._model is not None else None
        if batches is None or model is None or not self._exact or self._n != len(learn.dls.valid.dataset):
            return  # not the last epoch, cancelled, reduced precision, or a shard of the set (one rank's)
        self._outputs = ValidOutputs(batches)
        self._stamp = (weakref.ref(model), weakref.ref(learn.dls.valid), _weights_stamp(model))

    def fresh(self, learn: Learner) -> ValidOutputs | None:
        """The kept outputs if they still describe `learn`'s model on its validation set, else None."""
        if self._outputs is None or self._stamp is None:
            return None
        model, loader, version = self._stamp
        if model() is not learn.model or loader() is not learn.dls.valid or version != _weights_stamp(learn.model):
            return None
        return self._outputs


def kept_valid_outputs(learn: Learner) -> ValidOutputs | None:
    """The last validation pass's outputs, when a KeepValidOutputs callback on `learn` kept fresh ones."""
    for cb in learn.cbs:
        if isinstance(cb, KeepValidOutputs):
            return cb.fresh(learn)
    return None


def validation_images(learn: Learner, keys: Sequence[str]) -> torch.Tensor:
    """The items' images, centre-resized as the validation set sees them, as floats in [0, 1]."""
    size, method = learn.dls.config.size, learn.dls.config.resize_method
    root: Path = learn.dls.items.root
    return (
        torch.stack([image_to_uint8_tensor(resize_image(open_rgb(root / k), size, method, None)) for k in keys]).float()
        / 255
    )


def heatmap_artifact(i: int) -> str:
    """The artifact that holds the i-th top loss's heatmap."""
    return f"heatmaps/top_loss_{i}.png"


class TopLossHeatmaps:
    """The heatmap of each top-loss item for the class the model gave it, as an artifact the interpretation page
    lays over the item's image (`heatmaps/top_loss_{i}.png`: the heat in colour, its strength as its opacity, at
    the image's own size). Drawn from a copy of the model taken at the first one: the plots draw on a thread of
    their own while the job goes on with the model (an export traces it)."""

    def __init__(self, learn: Learner) -> None:
        self.learn = learn
        self._model: nn.Module | None = None
        self._lock = threading.Lock()

    def _copy(self) -> nn.Module:
        with self._lock:
            if self._model is None:
                model = copy.deepcopy(unwrap(self.learn.model)).float().cpu().eval()
                model._compiled_call_impl = None  # a compiled model's copy would call the original's compiled code
                self._model = model
            return self._model

    def plots(self, items: Sequence[tuple[str, int]]) -> list[tuple[str, Callable[[Path], Path]]]:
        """(artifact name, drawer) for each (item key, class index), in order."""
        return [
            (f"heatmaps/top_loss_{i}.png", functools.partial(self.draw, key, c)) for i, (key, c) in enumerate(items)
        ]

    def draw(self, key: str, class_index: int, path: Path) -> Path:
        cfg = self.learn.dls.config
        img = open_rgb(Path(self.learn.dls.items.root) / key)
        x = image_to_uint8_tensor(resize_image(img, cfg.size, cfg.resize_method, None))[None].float() / 255
        model = self._copy()
        with self._lock:  # the hook is on the shared copy
            _, cam = grad_cam(model, self.learn.dls.normalize(x), heatmap_layer(model, {}), [class_index])
        heat = on_image(cam[0], img.width, img.height, cfg.size, cfg.resize_method)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(colour_png(heat))
        return Path(path)
