"""`language_model`: the first model of the course's ULMFiT flow — next-word prediction with an AWD-LSTM on every text
of a dataset, labelled or not; from scratch, from another language model, or from WikiText-103's weights (then the
embeddings and decoder frozen for freeze_epochs, unfrozen for epochs). Its encoder and vocabulary are what a text
classifier (`fine_tune`, `stage1` with this job as its parent) starts from."""

from __future__ import annotations

from typing import Any

from core.engine.errors import DataError
from core.engine.items import TextItems
from core.jobs.context import JobContext
from core.jobs.kinds.base import JobKind
from core.jobs.spec import TrainSpec
from core.jobs.training import Built


def run(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    raise DataError("a language_model job learns from texts: choose a dataset uploaded with labels=text_csv")


def run_text(spec: TrainSpec, ctx: JobContext, items: TextItems) -> dict[str, Any]:
    from core.jobs.text_training import run_language_model

    return run_language_model(spec, ctx, items)


KIND = JobKind(
    name="language_model",
    summary="an AWD-LSTM language model on every text (labelled or not): the encoder a text classifier starts from",
    run=run,
    makes_model=True,
    objective="perplexity",
    lr=2e-2,
    lr_forms=frozenset({"number", "find"}),
    takes_parent=False,
    trains=("freeze_epochs", "epochs"),
    images=False,
    valid_pct=0.1,  # fastai's language model holds out 10% of the texts
    name_suffix="-lm",  # the dataset's own name is its classifiers': their champion and gate
    text=run_text,
    form_fields=("pretrained", "freeze_epochs", "epochs", "lr"),
)
