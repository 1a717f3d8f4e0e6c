"""VT ("vector transition") embeddings around any kinlm model's input embedding.

Shapes: B batch, T time, C embedding width. e_t is the input embedding of token t; a "first
position" is the row's first, a document's first or the first after padding (when the batch says
where those are):

    add:            e'_t = e_t + w (e_t - e_{t-1}),  e_{-1} = 0 (so e'_0 = (1 + w) e_0)     the source's T5
    concat_project: v_t = e_t - e_{t-1}, a_t = v_t - v_{t-1}, both 0 at first positions     the source's probes
                    e'_t = W [e_t; v_t] (+ a_t) + b      W: (C, 2C or 3C), init [I 0 (0)]: e'_t = e_t at start
    replace:        e'_t = v_t  (as in concat_project, 0 at first positions)                ablation

All (B, T, C). add and replace add no parameters (a learnable w adds one).

The wrapper registers a forward hook on the inner model's input embedding module (and on the
modules tied to it), so the inner model runs unchanged (for T5 the shared table feeds both the encoder and the decoder, and both get
VT). The hook finds which of the batch's id tensors it is embedding (input_ids or
decoder_input_ids) to use that tensor's masks.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from kinlm_core import ModelOutput



def find_input_embedding(model: nn.Module) -> nn.Module:
    """The module that maps token ids to input vectors: ``get_input_embeddings()`` (transformers
    models, also one held as ``hf``/``model``), else a ``wte`` / ``embed_tokens`` / ``tok_emb`` embedding."""
    for obj in (model, getattr(model, "hf", None), getattr(model, "model", None)):
        if obj is not None and hasattr(obj, "get_input_embeddings"):
            try:
                emb = obj.get_input_embeddings()
            except NotImplementedError:
                emb = None
            if isinstance(emb, nn.Module):
                return emb
    for name in ("wte", "embed_tokens", "tok_emb", "token_embedding"):
        if isinstance(getattr(model, name, None), nn.Embedding):
            return getattr(model, name)
    raise ValueError(f"vt_embeddings: cannot find the input embedding of {type(model).__name__}; the model needs "
                     "get_input_embeddings() or an nn.Embedding attribute named wte")


def input_embedding_modules(model: nn.Module) -> list[nn.Module]:
    """The input embedding and every other embedding module that shares its table (transformers' T5
    keeps encoder.embed_tokens and decoder.embed_tokens tied to ``shared``: those are the ones called)."""
    emb = find_input_embedding(model)
    w = emb.weight
    tied = [m for m in model.modules() if isinstance(m, nn.Embedding) and m is not emb
            and m.weight.shape == w.shape and m.weight.data_ptr() == w.data_ptr()]
    return [emb, *tied]


def restarts(ids: torch.Tensor, attention_mask=None, document_ids=None) -> torch.Tensor:
    """(B, T) bool: positions whose predecessor counts as 0 (row start, document start, after padding)."""
    r = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    r[:, 0] = True
    if document_ids is not None:
        r[:, 1:] |= document_ids[:, 1:] != document_ids[:, :-1]
    if attention_mask is not None:
        r[:, 1:] |= attention_mask[:, :-1] == 0
    return r


def difference(x: torch.Tensor, restart: torch.Tensor, first: str = "zero") -> torch.Tensor:
    """x_t - x_{t-1} along dim 1 (x: (B, T, C)); where ``restart``: 0 (first="zero") or x_t (first="self",
    i.e. x_{-1} = 0)."""
    prev = torch.zeros_like(x)
    prev[:, 1:] = x[:, :-1]
    d = x - prev
    r = restart.unsqueeze(-1)
    return d.masked_fill(r, 0.0) if first == "zero" else torch.where(r, x, d)


class VTEmbeddings(nn.Module):
    def __init__(self, cfg, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.mode, self.reset = cfg.mode, cfg.reset_at_boundaries
        self.block_size = getattr(inner, "block_size", None)
        self.w_range = cfg.w_range if cfg.learnable else None
        embs = input_embedding_modules(inner)
        C = embs[0].weight.shape[1]
        if cfg.mode == "add" and cfg.learnable:
            self.w = nn.Parameter(torch.tensor(float(cfg.w)))
        else:
            self.w = float(cfg.w)
        if cfg.mode == "concat_project":
            k = 3 if cfg.acceleration else 2
            self.proj = nn.Linear(k * C, C)
            with torch.no_grad():  # start as the identity on e_t: the inner model's own input
                self.proj.weight.zero_()
                self.proj.weight[:, :C].copy_(torch.eye(C))
                self.proj.bias.zero_()
        self.acceleration = cfg.acceleration
        params = inspect.signature(inner.forward).parameters
        self._inner_keys = set(params) if not any(p.kind is p.VAR_KEYWORD for p in params.values()) else None
        self._calls: list[tuple] = []  # (ids, attention_mask, document_ids) of the current forward only
        for emb in embs:
            emb.register_forward_hook(self._vt_hook)

    # --- the hook ------------------------------------------------------------------------------
    def _restart_for(self, ids: torch.Tensor) -> torch.Tensor:
        if self.reset:
            for cand, mask, docs in self._calls:
                if cand is not None and cand.shape == ids.shape and (
                        cand.data_ptr() == ids.data_ptr() or torch.equal(cand, ids)):
                    return restarts(ids, mask, docs)
        return restarts(ids)

    def _vt_hook(self, module, args, e):
        """e: (B, T, C) embedding output -> the VT input of the same shape."""
        ids = args[0]
        if ids.dim() == 1:  # an unbatched call: nothing to difference against
            return e
        r = self._restart_for(ids)
        if self.mode == "add":
            return e + self.w * difference(e, r, first="self")
        v = difference(e, r, first="zero")
        if self.mode == "replace":
            return v
        parts = [e, v] + ([difference(v, r)] if self.acceleration else [])
        return self.proj(torch.cat(parts, dim=-1))

    # --- the model -----------------------------------------------------------------------------
    def forward(self, input_ids, output_hidden_states: bool = False, attention_mask=None,
                document_ids=None) -> ModelOutput:
        return self._run(input_ids, output_hidden_states, attention_mask=attention_mask, document_ids=document_ids)

    def _run(self, input_ids, output_hidden_states: bool, **given) -> ModelOutput:
        if self.w_range is not None and self.training:
            with torch.no_grad():
                self.w.clamp_(*self.w_range)
        kw = {k: v for k, v in given.items() if v is not None and (self._inner_keys is None or k in self._inner_keys)}
        if output_hidden_states:
            kw["output_hidden_states"] = True
        self._calls = [(input_ids, given.get("attention_mask"), given.get("document_ids")),
                       (given.get("decoder_input_ids"), given.get("decoder_attention_mask"), None)]
        try:
            out = self.inner(input_ids, **kw)
        finally:
            self._calls = []
        if isinstance(self.w, nn.Parameter):
            out.metrics = {**out.metrics, "vt_w": self.w.detach()}
        return out

    def bind_tokenizer(self, tokenizer) -> None:
        if hasattr(self.inner, "bind_tokenizer"):
            self.inner.bind_tokenizer(tokenizer)

    def no_decay_param_names(self) -> set[str]:
        inner = self.inner.no_decay_param_names() if hasattr(self.inner, "no_decay_param_names") else set()
        return {f"inner.{n}" for n in inner} | ({"w"} if isinstance(self.w, nn.Parameter) else set())

    def train_state(self) -> dict:
        return self.inner.train_state() if hasattr(self.inner, "train_state") else {}

    def load_train_state(self, state: dict) -> None:
        if hasattr(self.inner, "load_train_state"):
            self.inner.load_train_state(state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def added_parameters(self) -> int:
        """Parameters the wrapper adds to the inner model (0 for add with a fixed w and for replace)."""
        return self.num_parameters() - sum(p.numel() for p in self.inner.parameters())


class VTEmbeddingsSeq2Seq(VTEmbeddings):
    """The wrapper around an encoder-decoder: its forward also takes the decoder's inputs (the engine
    passes a model exactly the batch keys its forward names)."""

    def forward(self, input_ids, output_hidden_states: bool = False, attention_mask=None, document_ids=None,
                decoder_input_ids=None, decoder_attention_mask=None) -> ModelOutput:
        return self._run(input_ids, output_hidden_states, attention_mask=attention_mask, document_ids=document_ids,
                         decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask)


def wrap(cfg, inner: nn.Module) -> VTEmbeddings:
    """The wrapper class that matches the inner model (decoder-only or encoder-decoder)."""
    params = inspect.signature(inner.forward).parameters
    seq2seq = "decoder_input_ids" in params
    return (VTEmbeddingsSeq2Seq if seq2seq else VTEmbeddings)(cfg, inner)
