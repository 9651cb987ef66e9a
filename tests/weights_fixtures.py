"""Small files in the formats the fleet's weights store accepts: a tiny AWD-LSTM language model saved as fastai
saves one (its state dict's names, the embedding tied to the decoder), and its pickled vocabulary."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

LAYERS = 3


def tiny_awd_lstm(vocab: int = 12, emb: int = 4, hid: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """fastai's get_language_model(AWD_LSTM, vocab, emb_sz=emb, n_hid=hid, n_layers=3).state_dict(), in small."""
    gen = torch.Generator().manual_seed(seed)
    encoder = torch.randn(vocab, emb, generator=gen)
    state = {"0.encoder.weight": encoder, "0.encoder_dp.emb.weight": encoder}  # one tensor, as in fastai
    for i in range(LAYERS):
        n_in, n_out = (emb if i == 0 else hid), (emb if i == LAYERS - 1 else hid)
        state[f"0.rnns.{i}.weight_hh_l0_raw"] = torch.randn(4 * n_out, n_out, generator=gen)
        state[f"0.rnns.{i}.module.weight_ih_l0"] = torch.randn(4 * n_out, n_in, generator=gen)
        state[f"0.rnns.{i}.module.bias_ih_l0"] = torch.randn(4 * n_out, generator=gen)
        state[f"0.rnns.{i}.module.bias_hh_l0"] = torch.randn(4 * n_out, generator=gen)
    state["1.decoder.weight"] = encoder
    state["1.decoder.bias"] = torch.zeros(vocab)
    return state


def vocab(n: int = 12) -> list[str]:
    """fastai's special tokens first, then words."""
    special = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]
    return [*special, *(f"word{i}" for i in range(n - len(special)))][:n]


def write_lstm_fwd(path: Path, with_opt: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """lstm_fwd.pth as fastai's save_model writes it ({'model', 'opt'}), or the bare state dict."""
    state = tiny_awd_lstm(seed=seed)
    opt = {"state": [{"grad_avg": torch.zeros(3)}], "hypers": [{"lr": 0.01, "mom": 0.9, "wd": 0.01}]}
    torch.save({"model": state, "opt": opt} if with_opt else state, path)
    return state


def write_itos(path: Path, words: list[str] | None = None, protocol: int = pickle.DEFAULT_PROTOCOL) -> list[str]:
    """itos_wt103.pkl: the vocabulary, pickled."""
    words = vocab() if words is None else words
    path.write_bytes(pickle.dumps(words, protocol=protocol))
    return words
