"""Configuration of an exported kinlm "Hamiltonian" language model (torch-free; transformers only).

Written by kinlm's export; loads without kinlm:
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
"""

from transformers import PretrainedConfig


class HamiltonianConfig(PretrainedConfig):
    """Momentum embeddings + adaptive-gravity attention + causal-conv reflex (see the modeling file).

    vocab_size: the tokenizer's vocabulary (kinlm's padded rows are cut off by the export).
    d_model, n_layer, n_head: width C, blocks, heads (head dim C / n_head, even).
    block_size: the longest context (RoPE positions 0..block_size-1); ``generate`` restarts from the
      last block_size tokens when a longer context would be needed, as kinlm's sampler does.
    beta, reset_strength, eot_token_id: the momentum EMA and its reset at end-of-text (None: no resets).
    conv_kernel, reflex: the depthwise causal conv branch.
    distance_cap, distance_scale: the gravity penalty distance_scale * g * min(|i - j|, cap).
    mlp_ratio, rope_base, dropout, attn_dropout, layer_norm_eps: as named.
    """

    model_type = "kinlm_hamiltonian"

    def __init__(self, vocab_size=50257, d_model=640, n_layer=12, n_head=10, block_size=1024, beta=0.9,
                 reset_strength=0.5, eot_token_id=None, conv_kernel=3, reflex=True, distance_cap=64,
                 distance_scale=0.1, mlp_ratio=4, rope_base=10000.0, dropout=0.0, attn_dropout=0.0,
                 layer_norm_eps=1e-5, **kwargs):
        self.vocab_size, self.d_model, self.n_layer, self.n_head = vocab_size, d_model, n_layer, n_head
        self.block_size, self.beta, self.reset_strength, self.eot_token_id = block_size, beta, reset_strength, eot_token_id
        self.conv_kernel, self.reflex = conv_kernel, reflex
        self.distance_cap, self.distance_scale = distance_cap, distance_scale
        self.mlp_ratio, self.rope_base = mlp_ratio, rope_base
        self.dropout, self.attn_dropout, self.layer_norm_eps = dropout, attn_dropout, layer_norm_eps
        # transformers' generic names, read by generate, pipelines and lm-evaluation-harness
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = d_model, n_layer, n_head
        self.max_position_embeddings = block_size
        kwargs.setdefault("tie_word_embeddings", False)  # the head reads E_q directly: nothing to tie
        super().__init__(**kwargs)
