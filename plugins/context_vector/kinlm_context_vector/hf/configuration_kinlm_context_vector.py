"""Configuration of an exported kinlm context-vector language model (torch-free; transformers only).

Written by kinlm's export; loads without kinlm:
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
"""

from transformers import PretrainedConfig


class ContextVectorConfig(PretrainedConfig):
    """Attention-free LM carrying one context vector (see the modeling file for the equations).

    vocab_size; d_embed (d_e), d_hidden (d_h), n_layer (L FNN layers), d_context (d_c);
    update: "gated" or "additive"; layernorm: LayerNorm on the updated context (eps layer_norm_eps);
    clamp: bound of the context (None: no clamp); max_positions: rows of the positional table, which
    exists when ``positions`` (position t reads row t mod max_positions); dropout after every FNN layer.
    """

    model_type = "kinlm_context_vector"

    def __init__(self, vocab_size=1000, d_embed=256, d_hidden=512, n_layer=6, d_context=256, update="gated",
                 layernorm=True, clamp=10.0, positions=False, max_positions=64, dropout=0.0, layer_norm_eps=1e-5,
                 **kwargs):
        if update not in ("gated", "additive"):
            raise ValueError(f"update must be 'gated' or 'additive', got {update!r}")
        self.vocab_size, self.d_embed, self.d_hidden, self.n_layer = vocab_size, d_embed, d_hidden, n_layer
        self.d_context, self.update, self.layernorm, self.clamp = d_context, update, layernorm, clamp
        self.positions, self.max_positions, self.dropout = positions, max_positions, dropout
        self.layer_norm_eps = layer_norm_eps
        self.hidden_size, self.num_hidden_layers = d_hidden, n_layer   # transformers' generic names
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
