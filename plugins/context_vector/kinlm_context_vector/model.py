"""The context-vector LM: no attention, one context vector carried along the sequence.

Shapes: B batch, T time, V vocabulary, d_e embedding, d_h FNN width, d_c context, L FNN layers.

    c_0 = 0                                                        (B, d_c)
    for t = 1..T:
        e_t = E[x_t] (+ P[(t - 1) mod max_positions])              (B, d_e) P: the first
              implementation's learned positional table (additive update by default); none when gated
        u_t = FNN([e_t; c_{t-1}])                                  (B, d_h)
              FNN = L x (Linear -> ReLU -> Dropout); layer 1 maps d_e + d_c -> d_h
        logits_t = W_out u_t                                       (B, V)   (no weight tying)
        gated:    c_t = sigmoid(W_f u_t) * c_{t-1} + sigmoid(W_i u_t) * W_c u_t
        additive: c_t = c_{t-1} + W_c u_t
        c_t = clamp(LayerNorm(c_t), -clamp, clamp)                  (both optional)

The first layer is two Linears, ``in_embed`` (d_e -> d_h, with the bias) and ``in_context``
(d_c -> d_h, no bias): the same map as one Linear on the concatenation, but the embedding half is
computed for all T positions at once before the loop. W_c, W_f, W_i are the rows of one Linear
``gates`` (d_h -> 3 d_c; d_c for the additive update). The head runs on all T positions after the
loop. What stays inside the loop is one (B, d_c) x (d_c, d_h) product, L-1 (B, d_h) x (d_h, d_h)
products, the gate product and elementwise work: all batched over B, and by default run by one
TorchScript call per sequence (``context_scan``) so that no Python runs per token.

Decoding keeps only the context: ``decode(ids, state)`` returns the logits and the new state, c
(B, d_c), or (c, next position mod max_positions) with the positional table, whatever the length
already generated.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from kinlm_core import ModelOutput
from kinlm_core.nn import CompiledStep


def context_step(pre_t: Tensor, c: Tensor, w_ctx: Tensor, ws: List[Tensor], bs: List[Tensor], w_gate: Tensor,
                 b_gate: Tensor, ln_w: Optional[Tensor], ln_b: Optional[Tensor], masks_t: List[Tensor],
                 gated: bool, clamp: float) -> Tuple[Tensor, List[Tensor]]:
    """One token of the recurrence on raw weights: pre_t (B, d_h) the embedding half of FNN layer 1
    plus its bias, c (B, d_c) the context c_{t-1}, masks_t the L dropout masks of this token (B, d_h)
    or [] (weights as in :func:`context_scan`) -> the context c_t (B, d_c) and the L layer outputs
    (B, d_h) each (the last is u_t)."""
    d_c = c.size(1)
    drop = len(masks_t) > 0
    h = torch.relu(pre_t + torch.mm(c, w_ctx.t()))                       # (B, d_h)
    if drop:
        h = h * masks_t[0]
    hs: List[Tensor] = [h]
    for l in range(len(ws)):
        h = torch.relu(F.linear(h, ws[l], bs[l]))                        # (B, d_h)
        if drop:
            h = h * masks_t[l + 1]
        hs.append(h)
    g = F.linear(h, w_gate, b_gate)                                       # (B, k d_c)
    if gated:
        delta, f, i = g.split(d_c, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * delta
    else:
        c = c + g
    if ln_w is not None and ln_b is not None:
        c = F.layer_norm(c, [d_c], ln_w, ln_b, 1e-5)
    if clamp > 0:
        c = torch.clamp(c, -clamp, clamp)
    return c, hs


def context_scan(pre: Tensor, c: Tensor, w_ctx: Tensor, ws: List[Tensor], bs: List[Tensor], w_gate: Tensor,
                 b_gate: Tensor, ln_w: Optional[Tensor], ln_b: Optional[Tensor], masks: List[Tensor],
                 gated: bool, clamp: float, keep_layers: bool) -> Tuple[Tensor, Tensor, List[Tensor]]:
    """The recurrence over T steps on raw weights, :func:`context_step` per token (TorchScript-compatible;
    the model scripts it).

    pre: (T, B, d_h) the embedding half of FNN layer 1 plus its bias, for every position.
    c: (B, d_c) the context before the first step. w_ctx: (d_h, d_c) the context half of layer 1.
    ws, bs: layers 2..L, (d_h, d_h) and (d_h,). w_gate, b_gate: (k d_c, d_h), (k d_c,), rows
    [W_c; W_f; W_i] (k = 3, gated) or W_c (k = 1). ln_w, ln_b: (d_c,) or None (no LayerNorm).
    masks: L dropout masks (T, B, d_h) already scaled by 1 / (1 - p), or [] (no dropout).
    clamp: bound of the context (<= 0: none).
    Returns u (T, B, d_h), the contexts c_1..c_T (T, B, d_c) and, when keep_layers, the L layer
    outputs (T, B, d_h) each (the last is u).
    """
    us: List[Tensor] = []
    cs: List[Tensor] = []
    layers: List[List[Tensor]] = [[] for _ in range(len(ws) + 1)]
    for t in range(pre.size(0)):
        c, hs = context_step(pre[t], c, w_ctx, ws, bs, w_gate, b_gate, ln_w, ln_b, [m[t] for m in masks],
                             gated, clamp)
        if keep_layers:
            for l in range(len(hs)):
                layers[l].append(hs[l])
        us.append(hs[-1])
        cs.append(c)
    per_layer: List[Tensor] = [torch.stack(x) for x in layers] if keep_layers else []
    return torch.stack(us), torch.stack(cs), per_layer


compiled_step = CompiledStep(context_step)  # one compiled call per token (CUDA graphs on a GPU)


def _scan_compiled(pre: Tensor, c: Tensor, w_ctx: Tensor, ws: List[Tensor], bs: List[Tensor], w_gate: Tensor,
                   b_gate: Tensor, ln_w: Optional[Tensor], ln_b: Optional[Tensor], masks: List[Tensor],
                   gated: bool, clamp: float, keep_layers: bool) -> Tuple[Tensor, Tensor, List[Tensor]]:
    """``context_scan`` with each token's step compiled (``loop="compiled"``): same arguments and
    results; Python drives the T calls, each a few fused kernels (one CUDA-graph replay on a GPU)."""
    us: List[Tensor] = []
    cs: List[Tensor] = []
    layers: List[List[Tensor]] = [[] for _ in range(len(ws) + 1)]
    for t in range(pre.size(0)):
        c, hs = compiled_step(pre[t], c, w_ctx, ws, bs, w_gate, b_gate, ln_w, ln_b, [m[t] for m in masks],
                              gated, clamp)
        for l in range(len(hs) if keep_layers else 0):
            layers[l].append(hs[l])
        us.append(hs[-1])
        cs.append(c)
    return torch.stack(us), torch.stack(cs), [torch.stack(x) for x in layers] if keep_layers else []


_scripted = None


def scripted_scan():
    """``context_scan`` compiled by TorchScript once per process (deprecated in torch 2.x but the
    fastest per-token loop on CPU that keeps autograd; torch.compile of a loop over T unrolls it)."""
    global _scripted
    if _scripted is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _scripted = torch.jit.script(context_scan)
    return _scripted


class ContextVectorLM(nn.Module):
    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.block_size = None  # no context limit: generators never crop
        self.gated = cfg.update == "gated"
        self.clamp = cfg.clamp
        self.d_context = cfg.d_context
        self.embed = nn.Embedding(vocab_size, cfg.d_embed)
        self.max_positions = cfg.max_positions
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.d_embed) if cfg.positions else None
        self.in_embed = nn.Linear(cfg.d_embed, cfg.d_hidden)                  # layer 1, embedding half
        self.in_context = nn.Linear(cfg.d_context, cfg.d_hidden, bias=False)  # layer 1, context half
        self.layers = nn.ModuleList(nn.Linear(cfg.d_hidden, cfg.d_hidden) for _ in range(cfg.n_layer - 1))
        self.dropout = cfg.dropout
        self.gates = nn.Linear(cfg.d_hidden, (3 if self.gated else 1) * cfg.d_context)  # [W_c; W_f; W_i]
        self.norm = nn.LayerNorm(cfg.d_context) if cfg.layernorm else None
        self.head = nn.Linear(cfg.d_hidden, vocab_size)
        self.apply(self._init)

    def _init(self, mod):
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, 0.0, self.cfg.init_std)
        if isinstance(mod, nn.Linear) and mod.bias is not None:
            nn.init.zeros_(mod.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def get_input_embeddings(self) -> nn.Module:
        """E, the token embedding: E[x_t] enters FNN layer 1 beside c_{t-1} (computed for all T before the loop)."""
        return self.embed

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.embed = module

    # --- the recurrence ------------------------------------------------------------------------

    def _update(self, c: Tensor, g: Tensor) -> Tensor:
        """c_{t-1} (B, d_c), gate pre-activations g (B, k d_c) -> c_t (B, d_c)."""
        if self.gated:
            delta, f, i = g.split(self.d_context, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * delta
        else:
            c = c + g
        if self.norm is not None:
            c = self.norm(c)
        return c.clamp(-self.clamp, self.clamp) if self.clamp is not None else c

    def _scan_eager(self, pre: Tensor, c: Tensor, masks: list, keep_layers: bool):
        """The readable loop on the modules (what ``context_scan`` does on raw weights)."""
        us, cs, layers = [], [], [[] for _ in range(len(self.layers) + 1)]
        for t in range(pre.size(0)):
            h = F.relu(pre[t] + self.in_context(c))                      # (B, d_h)
            h = h * masks[0][t] if masks else h
            layers[0].append(h)
            for l, layer in enumerate(self.layers):
                h = F.relu(layer(h))
                h = h * masks[l + 1][t] if masks else h
                layers[l + 1].append(h)
            c = self._update(c, self.gates(h))                            # (B, d_c)
            us.append(h)
            cs.append(c)
        return torch.stack(us), torch.stack(cs), [torch.stack(x) for x in layers] if keep_layers else []

    def _scan_raw(self, scan, pre: Tensor, c: Tensor, masks: list, keep_layers: bool):
        """``context_scan`` (TorchScript) or ``_scan_compiled`` on the modules' raw weights."""
        ln_w, ln_b = (self.norm.weight, self.norm.bias) if self.norm is not None else (None, None)
        return scan(pre, c.to(pre.dtype), self.in_context.weight, [m.weight for m in self.layers],
                    [m.bias for m in self.layers], self.gates.weight, self.gates.bias, ln_w, ln_b, masks,
                    self.gated, float(self.clamp or 0.0), keep_layers)

    def loop_for(self, device_type: str) -> str:
        """The loop that runs now: the configured one, or for "auto" "script" unless autocast is on or a
        Linear is not a plain ``nn.Linear`` (quantised: the raw-weight loops need ``.weight``)."""
        mode = self.cfg.loop
        if mode != "auto":
            return mode
        plain = all(type(m) is nn.Linear for m in (self.in_context, self.gates, *self.layers))
        return "script" if plain and not torch.is_autocast_enabled(device_type) else "eager"

    def embed_at(self, input_ids: Tensor, start: int = 0) -> Tensor:
        """The FNN's token input: E[x] (B, T, d_e), plus P[(start + t) mod max_positions] for the
        t-th of the T ids when the model has the positional table (``start``: tokens before them)."""
        e = self.embed(input_ids)
        if self.position_embedding is None:
            return e
        pos = torch.arange(start, start + input_ids.size(1), device=input_ids.device) % self.max_positions
        return e + self.position_embedding(pos)                          # (T, d_e) broadcast over B

    def run(self, input_ids: Tensor, c: Tensor | None = None, keep_layers: bool = False, start: int = 0):
        """input_ids (B, T), context c (B, d_c) or None (zeros), ``start`` the position of the first id ->
        embeddings (B, T, d_e), u (B, T, d_h), contexts c_1..c_T (B, T, d_c), layer outputs [(B, T, d_h)] * L."""
        B, T = input_ids.shape
        e = self.embed_at(input_ids, start)                               # (B, T, d_e)
        pre = self.in_embed(e).transpose(0, 1).contiguous()               # (T, B, d_h)
        if c is None:
            c = pre.new_zeros(B, self.d_context)
        masks = []
        if self.training and self.dropout > 0:
            keep = 1.0 - self.dropout
            masks = [torch.empty_like(pre).bernoulli_(keep).div_(keep) for _ in range(len(self.layers) + 1)]
        loop = self.loop_for(input_ids.device.type)
        if loop == "eager":
            u, cs, layers = self._scan_eager(pre, c, masks, keep_layers)
        else:
            u, cs, layers = self._scan_raw(scripted_scan() if loop == "script" else _scan_compiled,
                                           pre, c, masks, keep_layers)
        return e, u.transpose(0, 1), cs.transpose(0, 1), [x.transpose(0, 1) for x in layers]

    # --- the model contract --------------------------------------------------------------------

    def forward(self, input_ids: Tensor, output_hidden_states: bool = False) -> ModelOutput:
        """input_ids (B, T) -> logits (B, T, V); every example starts from c_0 = 0.

        hidden_states (when asked): (E[x] (+ P[t]) (B, T, d_e), FNN layer 1..L outputs (B, T, d_h),
        the context trajectory c_1..c_T (B, T, d_c)): index 0 is the embedding output and the last
        the state after the final (context) LayerNorm, as in transformers' convention.
        """
        e, u, cs, layers = self.run(input_ids, keep_layers=output_hidden_states)
        logits = self.head(u)                                             # (B, T, V)
        hidden = (e, *layers, cs) if output_hidden_states else None
        return ModelOutput(logits=logits, hidden_states=hidden)

    def decode(self, input_ids: Tensor, state=None):
        """The decoding protocol: ids (B, T) and the state (None: start from zero) -> (logits (B, T, V),
        the new state). The state is the context c (B, d_c); with the positional table it is
        (c, the next id's position mod max_positions). It never grows with the length."""
        if self.position_embedding is None:
            _, u, cs, _ = self.run(input_ids, state)
            return self.head(u), cs[:, -1]
        c, start = state if state is not None else (None, 0)
        _, u, cs, _ = self.run(input_ids, c, start=start)
        return self.head(u), (cs[:, -1], (start + input_ids.size(1)) % self.max_positions)

    def hf_export(self, tokenizer):
        """The transformers custom-code export (issue #33): see kinlm_context_vector/export.py."""
        from .export import hf_export

        return hf_export(self, tokenizer)
