"""Configuration of kinlm's `gpt` as transformers custom code (exported by kinlm; needs torch-free
transformers only). A template shipped with kinlm_core: kinlm never imports it."""

from transformers import PretrainedConfig


class KinlmGPTConfig(PretrainedConfig):
    """A GPT-2-style decoder: learned positions, pre-LayerNorm blocks, tanh-GELU MLP, tied head."""

    model_type = "kinlm_gpt"

    def __init__(self, vocab_size=256, block_size=64, n_layer=2, n_head=2, d_model=64, bias=True,
                 layer_norm_eps=1e-5, **kwargs):
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.d_model = n_layer, n_head, d_model
        self.bias, self.layer_norm_eps = bias, layer_norm_eps
        self.max_position_embeddings = block_size
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = d_model, n_layer, n_head
        kwargs.setdefault("tie_word_embeddings", False)  # the head reads wte directly (no lm_head to tie)
        super().__init__(**kwargs)
