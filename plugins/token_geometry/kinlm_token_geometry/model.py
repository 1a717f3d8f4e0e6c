"""`llama_like`: the configurable LLaMA-like decoder of nikitus20/llama-token-geometry (d1c904ea),
written from the method note. Read top to bottom: norms -> attention (with a KV cache) -> MLP ->
block placements -> model -> decoding.

Shapes: B batch, T time, C = d_model, H heads, D = C / H head dim, V vocabulary, L blocks.

    h_0 = N_emb(dropout(E[x] + P[pos]))            (P: learned positions; absent with RoPE; N_emb optional)
    preln:  h = h + Attn(N1(h));      h = h + MLP(N2(h))
    postln: h = N1(h + Attn(h));      h = N2(h + MLP(h))
    periln: h = P1(h + Attn(N1(h)));  h = P2(h + MLP(N2(h)))
    mixln:  postln for blocks < floor(mixln_split * L), preln above
    logits = N_f(h_L) E^T                            (head tied to the token embedding, no bias)

    SwiGLU: MLP(x) = W_down(SiLU(W_gate x) * W_up x), hidden floor(8/3 C);  GELU: W_2 GELU(W_1 x), hidden 4C
    Attention: causal softmax(q k^T / sqrt(D)) v per head (SDPA), RoPE on q, k when positions="rope".

Init: every weight N(0, init_std); the attention output projection and the GELU MLP's down
projection N(0, init_std / sqrt(2L)). The source scales only parameters named c_proj / w2, which
misses its own SwiGLU down_proj: so does the default here (``residual_init="source"``);
``residual_init="all"`` scales SwiGLU's down too. Weight decay reaches every parameter
(``decay="all"``, the source's AdamW over model.parameters()).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinlm_core import HFExport, ModelOutput
from kinlm_core.nn import RMSNorm, RotaryEmbedding, SwiGLU


def make_norm(cfg) -> nn.Module:
    """RMSNorm (weight only) or LayerNorm without bias; both over the last dim C."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)


class Attention(nn.Module):
    """Causal multi-head self-attention with an optional KV cache.

    forward(x (B, T, C), cache=None | (k, v) each (B, H, S, D), offset=S) -> (y (B, T, C), (k, v) (B, H, S+T, D)).
    Query t (absolute position offset + t) attends to keys 0..offset + t.
    """

    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)     # residual output projection
        self.rope = RotaryEmbedding(self.head_dim, cfg.block_size, cfg.rope_base) if cfg.positions == "rope" else None
        self.attn_dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cache=None, offset: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if self.rope is not None:
            q, k = self.rope(q, k, offset)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)             # (B, H, S+T, D)
        p = self.attn_dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:  # queries sit at the end of the keys: query t sees keys 0..S+t
            S = k.size(2) - T
            mask = torch.ones(T, S + T, dtype=torch.bool, device=x.device).tril(S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y)), (k, v)


class GeluMLP(nn.Module):
    """MLP(x) = W_2 GELU(W_1 x); x: (..., C) -> (..., C), hidden width from the config."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)                   # residual output projection

    def forward(self, x):
        return self.down(F.gelu(self.fc(x)))


class Block(nn.Module):
    """One block with its norm placement ("preln", "postln" or "periln"; mixln is resolved per block)."""

    def __init__(self, cfg, placement: str):
        super().__init__()
        self.placement = placement
        self.n1, self.n2 = make_norm(cfg), make_norm(cfg)
        if placement == "periln":
            self.p1, self.p2 = make_norm(cfg), make_norm(cfg)
        self.attn = Attention(cfg)
        hidden = cfg.hidden_width()
        self.mlp = SwiGLU(cfg.d_model, hidden) if cfg.mlp == "swiglu" else GeluMLP(cfg.d_model, hidden)
        self.mlp_drop = nn.Dropout(cfg.dropout)

    def ff(self, x):
        return self.mlp_drop(self.mlp(x))

    def forward(self, h, cache=None, offset: int = 0):
        """h: (B, T, C) -> (B, T, C), and this block's (k, v) cache."""
        if self.placement == "preln":
            a, kv = self.attn(self.n1(h), cache, offset)
            h = h + a
            h = h + self.ff(self.n2(h))
        elif self.placement == "postln":
            a, kv = self.attn(h, cache, offset)
            h = self.n1(h + a)
            h = self.n2(h + self.ff(h))
        else:  # periln
            a, kv = self.attn(self.n1(h), cache, offset)
            h = self.p1(h + a)
            h = self.p2(h + self.ff(self.n2(h)))
        return h, kv


class LlamaLike(nn.Module):
    """The model. ``forward`` returns logits and (on request) the L + 1 hidden states; ``decode``
    is the prefill / one-step decoding protocol with a KV cache."""

    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.block_size = cfg.block_size
        self.vocab_size = vocab_size
        self.decay = cfg.decay
        self.placements = cfg.block_placements()
        self.hf_config = {"block_size": cfg.block_size, "d_model": cfg.d_model, "n_head": cfg.n_head,
                          "placements": self.placements, "norm": cfg.norm, "norm_eps": cfg.norm_eps, "mlp": cfg.mlp,
                          "mlp_hidden": cfg.hidden_width(), "positions": cfg.positions, "rope_base": cfg.rope_base,
                          "embed_norm": cfg.embed_norm}  # the exported config's fields (hf_export)
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.emb_norm = make_norm(cfg) if cfg.embed_norm else None
        self.blocks = nn.ModuleList([Block(cfg, p) for p in self.placements])
        self.norm_f = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight                            # tied
        self.apply(lambda m: self._init(m, cfg.init_std))
        resid_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        for blk in self.blocks:
            nn.init.normal_(blk.attn.proj.weight, std=resid_std)
            if cfg.mlp == "gelu" or cfg.residual_init == "all":  # the source's SwiGLU down_proj keeps init_std
                nn.init.normal_(blk.mlp.down.weight, std=resid_std)

    @staticmethod
    def _init(module, std):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def get_input_embeddings(self) -> nn.Module:
        """The token table (tied to the head), before learned positions are added."""
        return self.tok_emb

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.tok_emb = module

    def decay_param_names(self) -> list[str]:
        """Parameters AdamW decays beyond kinlm's matrices: with ``decay="all"`` (the source's
        AdamW(model.parameters())) every one, norms and the (tied) embedding included."""
        return [n for n, _ in self.named_parameters()] if self.decay == "all" else []

    def num_parameters(self) -> int:
        """Unique parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def _run(self, input_ids, caches=None, output_hidden_states: bool = False):
        """input_ids (B, T) at positions offset..offset+T-1 (offset = cached length) ->
        (logits (B, T, V), hidden states or None, new caches)."""
        B, T = input_ids.shape
        offset = 0 if caches is None else caches[0][0].size(2)
        if offset + T > self.block_size:
            raise ValueError(f"sequence length {offset + T} exceeds block_size {self.block_size}")
        h = self.tok_emb(input_ids)                                       # (B, T, C)
        if self.pos_emb is not None:
            h = h + self.pos_emb(torch.arange(offset, offset + T, device=input_ids.device))
        h = self.drop(h)
        if self.emb_norm is not None:
            h = self.emb_norm(h)
        hidden = [h] if output_hidden_states else None
        new_caches = []
        for i, blk in enumerate(self.blocks):
            h, kv = blk(h, None if caches is None else caches[i], offset)
            new_caches.append(kv)
            if hidden is not None:
                hidden.append(h)
        h = self.norm_f(h)
        if hidden is not None:
            hidden[-1] = h                                                # transformers' convention
        return self.head(h), (tuple(hidden) if hidden is not None else None), new_caches

    def forward(self, input_ids, output_hidden_states: bool = False) -> ModelOutput:
        """input_ids (B, T), T <= block_size -> ModelOutput(logits (B, T, V), hidden_states).

        hidden_states (L + 1 entries, each (B, T, C)): the embedding output h_0, the outputs of
        blocks 1..L-1, and N_f(output of block L).
        """
        logits, hidden, _ = self._run(input_ids, None, output_hidden_states)
        return ModelOutput(logits=logits, hidden_states=hidden)

    def hf_export(self, tokenizer) -> HFExport:
        """This model as transformers custom code (``kinlm_llama_like``: LlamaLikeForCausalLM, with a KV
        cache for generate). Not transformers' LlamaForCausalLM: that computes only the PreLN, RMSNorm,
        SwiGLU, RoPE configuration without the embedding norm, not the source's defaults (PostLN, learned
        positions, an embedding norm) nor PeriLN, MixLN, GELU or LayerNorm; one file covers them all."""
        from importlib import resources

        if tokenizer.vocab_size > self.vocab_size:
            raise ValueError(f"llama_like export: the tokenizer has {tokenizer.vocab_size} ids, "
                             f"the model {self.vocab_size}")
        name, root = "kinlm_llama_like", resources.files("kinlm_token_geometry") / "hf"
        files = {f: (root / f).read_text(encoding="utf-8") for f in (f"configuration_{name}.py", f"modeling_{name}.py")}
        state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in self.state_dict().items()
                 if k != "head.weight"}  # the head is the token table
        notes = ("llama_like (kinlm-token-geometry), the configurable decoder of nikitus20/llama-token-geometry: "
                 f"blocks {', '.join(self.placements)}; generate keeps a KV cache.")
        return HFExport(name=name, config={"vocab_size": self.vocab_size, **self.hf_config},
                        config_class="LlamaLikeConfig", model_class="LlamaLikeForCausalLM", files=files,
                        state_dict=state, readme_notes=notes)

    @torch.no_grad()
    def decode(self, input_ids, state=None):
        """The decoding protocol. ``state=None``: prefill input_ids (B, T) -> (logits (B, T, V), state).
        Then feed the new tokens (B, 1) with the previous state -> (logits (B, 1, V), state).

        state = {"ids": every token so far (B, S), "kv": per block (k, v) each (B, H, S, D)}. When
        the context would exceed block_size, the last block_size tokens are prefilled again, so
        the logits equal a forward over the cropped context (what a sampler without a cache does).
        """
        if state is None:
            logits, _, kv = self._run(input_ids)
            return logits, {"ids": input_ids, "kv": kv}
        ids = torch.cat([state["ids"], input_ids], dim=1)
        if ids.size(1) > self.block_size:
            logits, _, kv = self._run(ids[:, -self.block_size:])
            return logits[:, -input_ids.size(1):], {"ids": ids, "kv": kv}
        logits, _, kv = self._run(input_ids, state["kv"])
        return logits, {"ids": ids, "kv": kv}
