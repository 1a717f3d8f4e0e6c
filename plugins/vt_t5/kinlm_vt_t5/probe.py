"""The `probe` analyzer: a linear probe on frozen representations, without and with VT features.

For each text, h = hidden_states[layer] (T, C) of the model (for a seq2seq model: the encoder's),
over the text's tokens (at most max_tokens):

    base = [mean_t h_t ; std_t h_t]                               (2C)
    vt   = [mean_t h_t ; sqrt(mean_{t>=1} |h_t - h_{t-1}|^2)]      (2C)   same size, same probe

(The mean of h_t - h_{t-1} telescopes to (h_T - h_0) / T, so the velocity enters through its RMS.)
Each feature set is standardised and fitted with a logistic regression on the training share of the
rows; accuracy and weighted F1 on the held-out share.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch

from kinlm_core.objectives import model_inputs, pad_id_of


def read_rows(cfg) -> tuple[list[str], list[str]]:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise ValueError(f"probe: {cfg.path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    texts, labels = [], []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"probe: {cfg.path}:{n} is not valid JSON ({e.msg})") from None
            if cfg.text_field not in row or cfg.label_field not in row:
                raise ValueError(f"probe: {cfg.path}:{n} needs the keys {cfg.text_field!r} and {cfg.label_field!r}")
            texts.append(str(row[cfg.text_field]))
            labels.append(str(row[cfg.label_field]))
    if len(set(labels)) < 2:
        raise ValueError(f"probe: {cfg.path} needs at least two labels, found {sorted(set(labels))}")
    return texts, labels


@torch.no_grad()
def states(model, tokenizer, text: str, layer: int, max_tokens: int) -> torch.Tensor:
    """(T, C) hidden states of one text (the encoder's for a seq2seq model)."""
    ids = tokenizer.encode(text)[:min(max_tokens, getattr(model, "block_size", None) or max_tokens)] or [pad_id_of(tokenizer)]
    dev = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=dev)
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x)}
    seq2seq = "decoder_input_ids" in model_inputs(model, {"decoder_input_ids": x})
    if seq2seq:
        batch["decoder_input_ids"] = torch.full((1, 1), pad_id_of(tokenizer), dtype=torch.long, device=dev)
    out = model(**model_inputs(model, batch), output_hidden_states=True)
    hs = out.encoder_hidden_states if seq2seq else out.hidden_states
    return hs[layer][0].float().cpu()


def features(h: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(base, vt) feature vectors of one text's states h (T, C); both 2C long."""
    mean = h.mean(0)
    std = h.std(0, unbiased=False)
    v = h[1:] - h[:-1]
    rms = v.pow(2).mean(0).sqrt() if len(v) else torch.zeros_like(mean)
    return torch.cat([mean, std]).numpy(), torch.cat([mean, rms]).numpy()


def fit_score(x_tr, y_tr, x_te, y_te, seed: int) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(x_tr, y_tr)
    pred = clf.predict(x_te)
    return float(accuracy_score(y_te, pred)), float(f1_score(y_te, pred, average="weighted"))


def run_probe(cfg, model, tokenizer, out_dir) -> dict:
    texts, labels = read_rows(cfg)
    order = np.random.default_rng(cfg.seed).permutation(len(texts))
    if cfg.max_rows is not None:
        order = order[:cfg.max_rows]
    was_training = model.training
    model.eval()
    try:
        feats = [features(states(model, tokenizer, texts[i], cfg.layer, cfg.max_tokens)) for i in order]
    finally:
        model.train(was_training)
    y = np.asarray([labels[i] for i in order])
    n_test = max(1, int(round(len(order) * cfg.test_fraction)))
    n_train = len(order) - n_test
    if n_train < 2 or len(set(y[:n_train])) < 2:
        raise ValueError(f"probe: {cfg.path}: too few rows ({len(order)}) for a train/test split with two labels")
    out = {"n_train": n_train, "n_test": n_test, "dim": int(len(feats[0][0]))}
    for k, name in enumerate(("base", "vt")):
        x = np.stack([f[k] for f in feats])
        acc, f1 = fit_score(x[:n_train], y[:n_train], x[n_train:], y[n_train:], cfg.seed)
        out[f"{name}_accuracy"], out[f"{name}_f1_weighted"] = acc, f1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probe.json").write_text(json.dumps(out, indent=2) + "\n")
    return out
