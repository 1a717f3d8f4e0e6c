"""CVFP: the Context Vector Fixed-Point LM in the "E" layout of rato-tokyo/new-llm.

Shapes: B batch, T time, N tokens of a stream, d width, K layers, V vocabulary.

    e_t   = LN_embed(E[x_t])      (embed_norm: trainable gain and bias)   token input   (d,)
    ContextBlock (K layers), c^0 = the context carried from token t-1:
    c^k   = LN_k(c^{k-1} + ReLU(A_k [c^{k-1}; e_t]))            k = 1..K                  (d,)
    c^K   is carried to token t+1.
    TokenBlock (K layers):
    z^1   = LN(e_t + ReLU(B_1 [c^1; e_t]))
    z^k   = LN(z^{k-1} + ReLU(B_k [c^k; z^{k-1}]))              k = 2..K
    logits_t = z^K E^T   (tied: the raw table, no bias; untied: W z^K + b)   predicts x_{t+1}   (V,)

Initialisation as the source's code: every Linear of both blocks W ~ N(0, 0.1), b ~ N(0, 0.01)
(``init_std``, ``bias_init_std``); LayerNorms gain 1, bias 0; an untied head zero (weight and bias).

The model holds weights only. Fixed-point training (which contexts come in, which stream, which
iteration) lives in the ``cvfp_two_phase`` curriculum's step functions (training.py); they call
``embed``, ``context_block``, ``token_block`` and ``logits`` directly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinlm_core import ModelOutput
from kinlm_core.nn import CompiledStep


class ContextLayer(nn.Module):
    """c' = LN(c + ReLU(A [c; e]))    c, e: (..., d) -> (..., d)"""

    def __init__(self, d: int):
        super().__init__()
        self.A = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, c, e):
        return self.norm(c + F.relu(self.A(torch.cat([c, e], dim=-1))))


def context_step(pres_t: list, c, w_ctx_t: list, norms: list) -> list:
    """One token through the K context layers on raw weights: c^k = LN_k(c^{k-1} + ReLU(c^{k-1} A_k[:, :d]^T
    + pre_k)), with pres_t the K hoisted token halves A_k[:, d:] e_t + b_k (B, d), c = c^0 (B, d),
    w_ctx_t the K transposed context halves (d, d) and norms the K LayerNorms' (weight, bias, eps)
    -> [c^1, ..., c^K], each (B, d)."""
    out = []
    for pre, w, (g, b, eps) in zip(pres_t, w_ctx_t, norms):
        c = F.layer_norm(c + F.relu(torch.addmm(pre, c, w)), (c.size(-1),), g, b, eps)  # (B, d)
        out.append(c)
    return out


compiled_context_step = CompiledStep(context_step)  # loop="compiled": one compiled call per token


class ContextBlock(nn.Module):
    """K context layers: c^0 (..., d), e (..., d) -> [c^1, ..., c^K], each (..., d).

    Works on any leading shape, so one call processes a single token (B, d) or, given every token's
    incoming context, a whole stream at once (N, d): the "parallel" iteration of phase 1.
    """

    def __init__(self, d: int, n_layer: int, compiled: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(ContextLayer(d) for _ in range(n_layer))
        self.compiled = compiled  # run's token step through torch.compile (CUDA graphs on a GPU)

    def forward(self, c, e) -> list:
        out = []
        for layer in self.layers:
            c = layer(c, e)
            out.append(c)
        return out

    def run(self, e, c0=None, compiled: bool | None = None) -> list:
        """Sequential recurrence over time: e (B, T, d), c0 (B, d) or None (zeros) -> K tensors (B, T, d).

        The token half of every layer, A_k[:, d:] e_t + b_k, does not depend on the context, so it is
        computed for all T positions and K layers before the loop (K batched matmuls); the loop keeps
        only the context half, one addmm per layer and token (A_k[:, :d] c + the hoisted term), and the
        elementwise work: no concatenation, no module calls per step. With ``compiled`` (None: the block's
        own ``compiled``) each token's step (:func:`context_step`) runs through ``torch.compile`` (one
        CUDA-graph replay per token on a GPU).
        Same function as :meth:`run_reference` (the readable per-token loop on the modules), which runs
        instead when a layer is not the plain ContextLayer (a subclass, a replaced Linear/LayerNorm, or a
        forward hook)."""
        if not self._plain():
            return self.run_reference(e, c0)
        B, T, d = e.shape
        c = e.new_zeros(B, d) if c0 is None else c0
        pre = [F.linear(e.transpose(0, 1), layer.A.weight[:, d:], layer.A.bias)  # K x (T, B, d)
               for layer in self.layers]
        w_ctx_t = [layer.A.weight[:, :d].t() for layer in self.layers]                     # K x (d, d)
        norms = [(layer.norm.weight, layer.norm.bias, layer.norm.eps) for layer in self.layers]
        step = compiled_context_step if (self.compiled if compiled is None else compiled) else context_step
        out = [[] for _ in self.layers]
        for t in range(T):
            cs = step([p[t] for p in pre], c, w_ctx_t, norms)                      # K x (B, d)
            for k, ck in enumerate(cs):
                out[k].append(ck)
            c = cs[-1]
        return [torch.stack(ck, dim=1) for ck in out]                               # K x (B, T, d)

    def _plain(self) -> bool:
        """True when every layer is exactly ContextLayer(Linear, LayerNorm) without hooks, so that
        :meth:`run` may bypass the modules' forward."""
        for layer in self.layers:
            for m, kind in ((layer, ContextLayer), (layer.A, nn.Linear), (layer.norm, nn.LayerNorm)):
                if type(m) is not kind or m._forward_hooks or m._forward_pre_hooks:
                    return False
        return True

    def run_reference(self, e, c0=None) -> list:
        """The readable recurrence, one ContextBlock call per token (same inputs and output as :meth:`run`)."""
        B, T, d = e.shape
        c = e.new_zeros(B, d) if c0 is None else c0
        per_t = []
        for t in range(T):
            cs = self(c, e[:, t])
            c = cs[-1]
            per_t.append(torch.stack(cs))  # (K, B, d)
        return list(torch.stack(per_t, dim=2).unbind(0))  # K x (B, T, d)


class TokenBlock(nn.Module):
    """z^1 = LN(e + ReLU(B_1 [c^1; e])), z^k = LN(z^{k-1} + ReLU(B_k [c^k; z^{k-1}])).
    contexts: K tensors (..., d), e (..., d) -> [z^1, ..., z^K], each (..., d)."""

    def __init__(self, d: int, n_layer: int):
        super().__init__()
        self.mix = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(n_layer))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_layer))

    def forward(self, contexts, e) -> list:
        z, out = e, []
        for c, mix, norm in zip(contexts, self.mix, self.norms):
            z = norm(z + F.relu(mix(torch.cat([c, z], dim=-1))))
            out.append(z)
        return out


class TableLookup(nn.Module):
    """Rows of a table: ``(ids (...), table (V, d)) -> table[ids] (..., d)``. No parameters of its own:
    the table stays the model's ``embedding`` (a parameter, or a buffer when frozen). It is the module
    that maps ids to the raw token vectors, so a wrapper can replace its output (``get_input_embeddings``)."""

    def __init__(self, d: int):
        super().__init__()
        self.embedding_dim = d

    def forward(self, ids, table):
        return F.embedding(ids, table)


def load_embedding(path: str, vocab_size: int, d: int) -> torch.Tensor:
    """A (vocab_size, d) float tensor from a .npy, .pt/.pth or .safetensors file (one tensor, or key "weight")."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"model.embedding_path: no file {path}")
    if p.suffix == ".npy":
        import numpy as np

        w = torch.from_numpy(np.load(p))
    elif p.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(p))
        w = tensors.get("weight", next(iter(tensors.values())) if len(tensors) == 1 else None)
        if w is None:
            raise ValueError(f"model.embedding_path: {path} holds {sorted(tensors)}; save one tensor or name it 'weight'")
    else:
        w = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(w, dict):
            w = w.get("weight")
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (vocab_size, d):
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"model.embedding_path: {path} has shape {shape}; expected (vocab {vocab_size}, d_model {d})")
    return w.float()


class CVFP(nn.Module):
    """The whole network. ``forward`` runs the recurrence from a zero context over each row."""

    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size, self.block_size = cfg, vocab_size, cfg.block_size
        d, K = cfg.d_model, cfg.n_layer
        if cfg.embedding_path:
            E = load_embedding(cfg.embedding_path, vocab_size, d)
        else:
            E = torch.randn(vocab_size, d) * (cfg.embedding_std or d ** -0.5)
        if cfg.freeze_embedding:
            self.register_buffer("embedding", E)  # a buffer: no phase or optimizer can train it
        else:
            self.embedding = nn.Parameter(E)
        self.embed_norm = nn.LayerNorm(d)  # trainable gain and bias, as the source's embed_norm
        self.lookup = TableLookup(d)        # E[x]: no state of its own (the table is ``embedding``)
        self.context_block = ContextBlock(d, K, compiled=cfg.loop == "compiled")
        self.token_block = TokenBlock(d, K)
        self.head = None if cfg.tie_head else nn.Linear(d, vocab_size)
        for block in (self.context_block, self.token_block):
            for mod in block.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.normal_(mod.weight, std=cfg.init_std)
                    nn.init.normal_(mod.bias, std=cfg.bias_init_std)
        if self.head is not None:  # the source zero-initialises its untied head (frozen in phase 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    def embed(self, ids):
        """ids (...) -> e (..., d): the normalised token stream input."""
        return self.embed_norm(self.lookup(ids, self.embedding))

    def get_input_embeddings(self) -> nn.Module:
        """The lookup E[x_t] of the raw token table (before LN_embed): the one module that maps ids to
        vectors; e_t = LN_embed(its output) feeds both the ContextBlock and the TokenBlock."""
        return self.lookup

    def set_input_embeddings(self, module: nn.Module) -> None:
        """Take the table of ``module`` (an nn.Embedding of shape (V, d)) as E; a frozen table stays a buffer."""
        w = module.weight
        if isinstance(self.embedding, nn.Parameter):
            self.embedding = nn.Parameter(w.detach().clone())
        else:
            self.embedding = w.detach().clone()

    def block_lists(self) -> dict:
        """The TokenBlock's K layer outputs z^1..z^K (their LayerNorms), each (B, T, d) over the whole
        sequence: what diff_wrapper mixes over time. The ContextBlock's layers run one token at a time
        inside the recurrence, so they are not blocks in that sense."""
        return {"token_block.norms": self.token_block.norms}

    def logits(self, z):
        """z^K (..., d) -> (..., V): the untied head W z^K + b, or z^K E^T with the raw table (no bias)."""
        return self.head(z) if self.head is not None else z @ self.embedding.t()

    def forward(self, input_ids, output_hidden_states: bool = False, contexts=None, c0=None):
        """input_ids (B, T) -> ModelOutput(logits (B, T, V), hidden_states (e, z^1..z^K)).

        ``contexts`` (K tensors (B, T, d)): use these ContextBlock outputs instead of running the
        recurrence (phase 2 feeds its cached contexts); ``c0`` (B, d): the incoming context of the
        first token (None: zeros)."""
        e = self.embed(input_ids)
        if contexts is None:
            contexts = self.context_block.run(e, c0)
        zs = self.token_block(contexts, e)
        return ModelOutput(logits=self.logits(zs[-1]),
                           hidden_states=(e, *zs) if output_hidden_states else None)

    @torch.no_grad()
    def decode(self, input_ids, state=None):
        """Decoding protocol: state = the carried context (B, d). Prefill (state None) or one step."""
        e = self.embed(input_ids)
        contexts = self.context_block.run(e, state)
        zs = self.token_block(contexts, e)
        return self.logits(zs[-1]), contexts[-1][:, -1]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hf_export(self, tokenizer):
        """The transformers custom-code export (issue #33): see kinlm_cvfp/export.py."""
        from .export import hf_export

        return hf_export(self, tokenizer)
