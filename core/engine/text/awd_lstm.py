"""AWD-LSTM [fastai: text/models/awdlstm.py, core.py; Merity et al. 2017]: an embedding with embedding dropout, LSTM
layers whose hidden-to-hidden weights are dropped (DropConnect) and whose outputs are dropped with one mask per
sequence, then either a tied linear decoder (the language model) or concat pooling and a small head (the
classifier). Parameter names are fastai's, so fastai's WikiText-103 weights load as they are, and its layer
groups (for freezing and discriminative rates) are fastai's splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

ARCH = "awd_lstm"
PAD_INDEX = 1  # xxpad's index in every vocabulary (fastai's special tokens come first)
CONFIG_KEYS = ("emb_sz", "n_hid", "n_layers")  # what arch_config may override, as fastai's config= does


@dataclass(frozen=True)
class AWDConfig:
    """The sizes and dropouts: fastai's awd_lstm_lm_config / awd_lstm_clas_config, scaled by drop_mult."""

    emb_sz: int = 400
    n_hid: int = 1152
    n_layers: int = 3
    output_p: float = 0.1
    hidden_p: float = 0.15
    input_p: float = 0.25
    embed_p: float = 0.02
    weight_p: float = 0.2

    @classmethod
    def language_model(cls, drop_mult: float = 1.0, overrides: dict[str, int] | None = None) -> AWDConfig:
        return cls(**(overrides or {})).scaled(drop_mult)

    @classmethod
    def classifier(cls, drop_mult: float = 1.0, overrides: dict[str, int] | None = None) -> AWDConfig:
        base = cls(output_p=0.4, hidden_p=0.3, input_p=0.4, embed_p=0.05, weight_p=0.5, **(overrides or {}))
        return base.scaled(drop_mult)

    def scaled(self, drop_mult: float) -> AWDConfig:
        return replace(
            self,
            output_p=self.output_p * drop_mult,
            hidden_p=self.hidden_p * drop_mult,
            input_p=self.input_p * drop_mult,
            embed_p=self.embed_p * drop_mult,
            weight_p=self.weight_p * drop_mult,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_arch_config(config: dict[str, Any] | None) -> dict[str, int]:
    """arch_config's overrides, checked: only emb_sz, n_hid, n_layers, each a bounded whole number."""
    if not config:
        return {}
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"arch_config: {unknown} are not AWD-LSTM settings; it takes {', '.join(CONFIG_KEYS)}")
    bounds = {"emb_sz": (8, 2048), "n_hid": (8, 4096), "n_layers": (1, 6)}
    out = {}
    for key, value in config.items():
        lo, hi = bounds[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or int(value) != value
            or not lo <= value <= hi
        ):
            raise ValueError(f"arch_config: {key} is a whole number from {lo} to {hi}")
        out[key] = int(value)
    return out


def dropout_mask(x: torch.Tensor, size: Sequence[int], p: float) -> torch.Tensor:
    """A Bernoulli(1-p) mask scaled by 1/(1-p), of `size`, like x."""
    return x.new_empty(*size).bernoulli_(1 - p).div_(1 - p)


class RNNDropout(nn.Module):
    """Dropout with one mask per sequence (the same units dropped at every step) [fastai: RNNDropout]."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * dropout_mask(x.data, (x.size(0), 1, *x.shape[2:]), self.p)


class WeightDropout(nn.Module):
    """DropConnect on an LSTM's hidden-to-hidden weights: the raw weight is the parameter, a dropped copy is what
    the LSTM runs with [fastai: WeightDropout]."""

    def __init__(self, module: nn.LSTM, weight_p: float, layer_names: Sequence[str] = ("weight_hh_l0",)) -> None:
        super().__init__()
        self.module, self.weight_p, self.layer_names = module, weight_p, list(layer_names)
        for layer in self.layer_names:
            w = getattr(self.module, layer)
            delattr(self.module, layer)
            self.register_parameter(f"{layer}_raw", nn.Parameter(w.data))
            setattr(self.module, layer, w.clone())
        self.module.flatten_parameters = self._do_nothing  # type: ignore[method-assign]

    def _do_nothing(self) -> None:
        return None

    def _set_weights(self) -> None:
        for layer in self.layer_names:
            raw = getattr(self, f"{layer}_raw")
            # A view, not the Parameter itself (the LSTM would register it) nor a copy (fastai clones on every call).
            dropping = self.training and self.weight_p > 0
            w = F.dropout(raw, p=self.weight_p, training=True) if dropping else raw.view_as(raw)
            setattr(self.module, layer, w)

    def forward(self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]) -> Any:
        self._set_weights()
        return self.module(x, hidden)

    def _apply(self, fn: Any, recurse: bool = True) -> WeightDropout:
        # Moving the module (to a device, a dtype) moves the raw weight; the dropped copies are made again.
        result = super()._apply(fn, recurse)
        for layer in self.layer_names:
            setattr(self.module, layer, getattr(self, f"{layer}_raw").data.clone())
        return result


class EmbeddingDropout(nn.Module):
    """Drops whole words: rows of the embedding matrix [fastai: EmbeddingDropout]."""

    def __init__(self, emb: nn.Embedding, embed_p: float) -> None:
        super().__init__()
        self.emb, self.embed_p = emb, embed_p

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        if self.training and self.embed_p != 0:
            mask = dropout_mask(self.emb.weight.data, (self.emb.weight.size(0), 1), self.embed_p)
            weight = self.emb.weight * mask
        else:
            weight = self.emb.weight
        return F.embedding(words, weight, self.emb.padding_idx)


class AWDLSTM(nn.Module):
    """The encoder: embedding, then n_layers LSTMs (the last one back to emb_sz, so the decoder can be tied). It
    keeps its hidden state between calls (a language model reads a long stream in bptt pieces); `reset` clears it.
    `last_raw` is the top layer's output before its dropout (the regularizer's temporal activation term)."""

    def __init__(self, vocab_sz: int, config: AWDConfig, pad_token: int = PAD_INDEX) -> None:
        super().__init__()
        self.config, self.n_layers, self.n_hid, self.emb_sz = config, config.n_layers, config.n_hid, config.emb_sz
        self.encoder = nn.Embedding(vocab_sz, config.emb_sz, padding_idx=pad_token)
        self.encoder_dp = EmbeddingDropout(self.encoder, config.embed_p)
        self.rnns = nn.ModuleList(
            [
                WeightDropout(
                    nn.LSTM(
                        config.emb_sz if i == 0 else config.n_hid,
                        config.n_hid if i != config.n_layers - 1 else config.emb_sz,
                        1,
                        batch_first=True,
                    ),
                    config.weight_p,
                )
                for i in range(config.n_layers)
            ]
        )
        self.encoder.weight.data.uniform_(-0.1, 0.1)
        self.input_dp = RNNDropout(config.input_p)
        self.hidden_dps = nn.ModuleList([RNNDropout(config.hidden_p) for _ in range(config.n_layers)])
        self.hidden: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.last_raw: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the hidden state (a new stream, a new batch of texts)."""
        self.hidden = None

    def _zero_hidden(self, bs: int, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sizes = [self.n_hid if i != self.n_layers - 1 else self.emb_sz for i in range(self.n_layers)]
        return [(like.new_zeros(1, bs, n), like.new_zeros(1, bs, n)) for n in sizes]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        bs = tokens.shape[0]
        output = self.input_dp(self.encoder_dp(tokens))
        hidden = self.hidden
        if hidden is None or hidden[0][0].shape[1] != bs:
            hidden = self._zero_hidden(bs, output)
        new_hidden = []
        for i, (rnn, hid_dp) in enumerate(zip(self.rnns, self.hidden_dps, strict=True)):
            h = hidden[i]
            output, new_h = rnn(output, (h[0].to(output.dtype), h[1].to(output.dtype)))
            new_hidden.append((new_h[0].detach(), new_h[1].detach()))
            if i != self.n_layers - 1:
                output = hid_dp(output)
        self.hidden = new_hidden
        self.last_raw = output
        return output


class LinearDecoder(nn.Module):
    """The language model's output layer, tied to the embedding [fastai: LinearDecoder]. `last_dropped` is its
    input after dropout (the regularizer's activation term)."""

    def __init__(self, n_out: int, n_hid: int, output_p: float, tie_encoder: nn.Embedding | None = None) -> None:
        super().__init__()
        self.decoder = nn.Linear(n_hid, n_out, bias=True)
        self.decoder.weight.data.uniform_(-0.1, 0.1)
        self.decoder.bias.data.zero_()
        self.output_dp = RNNDropout(output_p)
        if tie_encoder is not None:
            self.decoder.weight = tie_encoder.weight
        self.last_dropped: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped = self.output_dp(x)
        self.last_dropped = dropped
        return self.decoder(dropped)


class LanguageModel(nn.Sequential):
    """AWD-LSTM and its tied decoder: next-token logits (bs, seq_len, vocab) [fastai: get_language_model]. Its
    state dict's keys are fastai's (0.encoder.weight, 0.rnns.0.weight_hh_l0_raw, ..., 1.decoder.bias)."""

    def __init__(self, vocab_sz: int, config: AWDConfig) -> None:
        encoder = AWDLSTM(vocab_sz, config)
        super().__init__(encoder, LinearDecoder(vocab_sz, config.emb_sz, config.output_p, encoder.encoder))

    @property
    def encoder(self) -> AWDLSTM:
        return self[0]  # type: ignore[return-value]

    def reset(self) -> None:
        self.encoder.reset()


def lm_groups(model: LanguageModel) -> list[list[nn.Module]]:
    """fastai's awd_lstm_lm_split: each LSTM with its dropout, then the embedding with the decoder (what a frozen
    language model trains: a new vocabulary's rows)."""
    enc = model.encoder
    groups: list[list[nn.Module]] = [[rnn, dp] for rnn, dp in zip(enc.rnns, enc.hidden_dps, strict=True)]
    return [*groups, [enc.encoder, enc.encoder_dp, model[1]]]


class LinBnDrop(nn.Sequential):
    """BatchNorm1d, dropout, Linear, optional ReLU [fastai: LinBnDrop]."""

    def __init__(self, n_in: int, n_out: int, p: float, act: bool) -> None:
        layers: list[nn.Module] = [nn.BatchNorm1d(n_in)]
        if p:
            layers.append(nn.Dropout(p))
        layers.append(nn.Linear(n_in, n_out, bias=False))  # fastai: no bias after a batch norm... before it
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def masked_concat_pool(output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last step's output, the max and the mean over the steps that are not padding [fastai:
    masked_concat_pool]. Texts are padded at the front, so the last step is every text's own last token."""
    lens = (~mask).sum(dim=1).clamp(min=1).to(output.dtype)
    avg = output.masked_fill(mask[:, :, None], 0).sum(dim=1) / lens[:, None]
    mx = output.masked_fill(mask[:, :, None], -float("inf")).max(dim=1).values
    mx = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    return torch.cat([output[:, -1], mx, avg], dim=1)


class SentenceEncoder(nn.Module):
    """Runs the AWD-LSTM over each (front-padded) text in bptt pieces, keeping the outputs of at most `max_len`
    last tokens, and says which steps are padding [fastai: SentenceEncoder]."""

    def __init__(self, bptt: int, module: AWDLSTM, pad_idx: int = PAD_INDEX, max_len: int = 72 * 20) -> None:
        super().__init__()
        self.bptt, self.module, self.pad_idx, self.max_len = bptt, module, pad_idx, max_len

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sl = tokens.shape[1]
        self.module.reset()
        mask = tokens == self.pad_idx
        outs, masks = [], []
        for i in range(0, sl, self.bptt):
            out = self.module(tokens[:, i : min(i + self.bptt, sl)])
            if i > sl - self.max_len - self.bptt:  # keep the pieces that reach into the last max_len tokens
                outs.append(out)
                masks.append(mask[:, i : min(i + self.bptt, sl)])
        output, kept = torch.cat(outs, dim=1), torch.cat(masks, dim=1)
        return output[:, -self.max_len :], kept[:, -self.max_len :]


class PoolingLinearClassifier(nn.Module):
    """Concat pooling, then LinBnDrop layers [fastai: PoolingLinearClassifier]: dims (emb_sz*3, 50, n_out)."""

    def __init__(self, dims: Sequence[int], ps: Sequence[float]) -> None:
        super().__init__()
        n = len(dims) - 1
        self.layers = nn.Sequential(*[LinBnDrop(dims[i], dims[i + 1], ps[i], act=i < n - 1) for i in range(n)])

    def forward(self, encoded: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        output, mask = encoded
        return self.layers(masked_concat_pool(output, mask))


class TextClassifier(nn.Sequential):
    """The classifier [fastai: get_text_classifier]: SentenceEncoder(AWD-LSTM), then the pooling head. Its input is a
    batch of front-padded token ids; its output one logit per class."""

    def __init__(
        self, vocab_sz: int, n_out: int, config: AWDConfig, bptt: int = 72, lin_ftrs: Sequence[int] = (50,)
    ) -> None:
        encoder = SentenceEncoder(bptt, AWDLSTM(vocab_sz, config))
        dims = [config.emb_sz * 3, *lin_ftrs, n_out]
        ps = [config.output_p, *([0.1] * len(lin_ftrs))]
        super().__init__(encoder, PoolingLinearClassifier(dims, ps))

    @property
    def awd(self) -> AWDLSTM:
        return cast(SentenceEncoder, self[0]).module


def classifier_groups(model: TextClassifier) -> list[list[nn.Module]]:
    """fastai's awd_lstm_clas_split: the embedding, each LSTM with its dropout, the head."""
    enc = model.awd
    rnns: list[list[nn.Module]] = [[rnn, dp] for rnn, dp in zip(enc.rnns, enc.hidden_dps, strict=True)]
    return [[enc.encoder, enc.encoder_dp], *rnns, [model[1]]]


def encoder_state(lm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The AWD-LSTM's weights out of a language model's state dict (keys '0.*' -> '*')."""
    return {k[2:]: v for k, v in lm_state.items() if k.startswith("0.")}
