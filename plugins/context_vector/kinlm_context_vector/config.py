"""Config of the context-vector LM (torch-free; ``build`` imports the model).

Defaults are the paper's baseline of rato-tokyo/new-llm ("Context Vector Propagation", November
2025): d_e 256, d_h 512, 6 FNN layers, d_c 256, dropout 0.1, the gated update with LayerNorm and
clamp at 10, no positional embedding; 2.74M parameters with a 1,000-word vocabulary. The advanced
setting is d_c 512, 12 layers (4.84M). ``update="additive"`` is the first implementation (d4beb09):
it has a learned positional table added to the token embeddings, unless ``position_embedding`` is false.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from kinlm_core import ModelConfig


class ContextVectorConfig(ModelConfig):
    """Attention-free LM: one fixed-size context vector carried from token to token (O(1) memory decoding).

    Per position t (0-based from the start of the context), with c_0 = 0:
    ``u_t = FNN([E[x_t] (+ P[t mod max_positions]); c_{t-1}])``, ``logits_t = W_out u_t``, and the
    context update ``gated``: ``c_t = clamp(LN(sigmoid(W_f u_t) * c_{t-1} + sigmoid(W_i u_t) * W_c u_t))``;
    ``additive``: ``c_t = clamp(LN(c_{t-1} + W_c u_t))``. LayerNorm and clamp are options, so the
    source's first implementation is ``update=additive, layernorm=false, clamp=null`` (with its
    positional table P, on by default for ``additive``) and the normalised variant
    ``update=additive, layernorm=true, clamp=null``. The gated model has no positional embedding. No
    context limit either way (``block_size`` is None on the module: samplers never crop; past
    ``max_positions`` the table's rows repeat, as the source's generation wraps them).
    """

    type: Literal["context_vector"] = "context_vector"
    provides: ClassVar[dict[str, str]] = {
        "hidden_states": "E[x_t], the FNN layers' outputs u_t and the context trajectory c_1..c_T (all over time t)",
        "input_embeddings": "E, the token embedding that enters FNN layer 1 beside c_{t-1}"}
    lacks: ClassVar[dict[str, str]] = {
        "blocks": "its FNN layers run one token at a time inside the recurrence (a TorchScript loop on their "
                  "weights), so there is no (B, T, C) block output to mix over time"}
    d_embed: int = Field(256, ge=1, description="d_e: token embedding width")
    d_hidden: int = Field(512, ge=1, description="d_h: width of every FNN layer (and of u_t, the head's input)")
    n_layer: int = Field(6, ge=1, description="L: FNN layers, each Linear -> ReLU -> Dropout")
    d_context: int = Field(256, ge=1, description="d_c: size of the context vector")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout after every FNN layer")
    update: Literal["gated", "additive"] = Field(
        "gated", description='context update: "gated" (forget and input gates, the paper) or "additive" '
                             "(c_{t-1} + W_c u_t, the first commit; with layernorm: the normalised variant)")
    layernorm: bool = Field(True, description="LayerNorm (learned gain and bias) on the updated context")
    clamp: float | None = Field(10.0, gt=0, description="clamp the context to [-clamp, clamp] after the update "
                                "(None: no clamp)")
    position_embedding: bool | None = Field(
        None, description="a learned positional table P (max_positions x d_e, init N(0, init_std)) added to the "
        "token embeddings, as the source's first implementation (d4beb09); None: on for update additive (that "
        "implementation), off for gated (the later code removed it)")
    max_positions: int = Field(64, ge=1, description="rows of the positional table; position t reads row "
                               "t mod max_positions (source: max_seq_length, 32 in d4beb09's config, 64 in its "
                               "WikiText config)")
    init_std: float = Field(0.02, gt=0, description="std of the normal init of Linear and Embedding weights "
                            "(biases start at zero)")
    loop: Literal["auto", "script", "eager", "compiled"] = Field(
        "auto", description='how the sequential loop over tokens runs: "script" (TorchScript, one call per '
                            'sequence), "eager" (the readable module loop, also used by quantised models), '
                            '"compiled" (each token\'s step compiled by torch.compile; on CUDA as CUDA graphs, '
                            'so the GPU does not wait on Python; works under autocast; compiles on first use), '
                            '"auto" (script unless autocast is on or the Linears are quantised, then eager)')

    @property
    def positions(self) -> bool:
        """Whether the model has the positional table (``position_embedding``, or by default the additive update)."""
        return self.update == "additive" if self.position_embedding is None else self.position_embedding

    def build(self, vocab_size: int):
        from .model import ContextVectorLM

        return ContextVectorLM(self, vocab_size)
