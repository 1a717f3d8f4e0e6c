"""Configuration of kinlm's `llama_like` as transformers custom code (a template the
kinlm-token-geometry plugin exports; kinlm never imports it)."""

from transformers import PretrainedConfig


class LlamaLikeConfig(PretrainedConfig):
    """The decoder of nikitus20/llama-token-geometry as kinlm builds it: per-block norm placements
    (preln, postln, periln), RMSNorm or bias-free LayerNorm, SwiGLU or GELU, learned or rotary
    positions, an optional norm on the embeddings, no biases, the head tied to the token table."""

    model_type = "kinlm_llama_like"

    def __init__(self, vocab_size=256, block_size=64, d_model=64, n_head=2, placements=("preln",), norm="rmsnorm",
                 norm_eps=1e-6, mlp="swiglu", mlp_hidden=170, positions="learned", rope_base=10000.0,
                 embed_norm=True, **kwargs):
        self.vocab_size, self.block_size, self.d_model, self.n_head = vocab_size, block_size, d_model, n_head
        self.placements, self.norm, self.norm_eps = list(placements), norm, norm_eps
        self.mlp, self.mlp_hidden = mlp, mlp_hidden
        self.positions, self.rope_base, self.embed_norm = positions, rope_base, embed_norm
        self.n_layer = len(self.placements)
        self.max_position_embeddings = block_size
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = d_model, self.n_layer, n_head
        kwargs.setdefault("tie_word_embeddings", False)  # the head reads tok_emb directly (no lm_head to tie)
        super().__init__(**kwargs)
