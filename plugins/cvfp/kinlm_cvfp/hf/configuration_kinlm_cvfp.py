"""Configuration of an exported kinlm CVFP (Context Vector Fixed-Point) language model (torch-free).

Written by kinlm's export; loads without kinlm:
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
"""

from transformers import PretrainedConfig


class CvfpConfig(PretrainedConfig):
    """A recurrent ContextBlock carries one context vector, a TokenBlock predicts (see the modeling file).

    vocab_size; d_model (d, the width of embeddings and context); n_layer (K layers in each block);
    tie_head: logits = z^K E^T (no bias), else a Linear head with bias; layer_norm_eps of every
    LayerNorm. block_size is informational: the length kinlm trained and sampled with (the
    recurrence itself has no limit).
    """

    model_type = "kinlm_cvfp"

    def __init__(self, vocab_size=50257, d_model=768, n_layer=6, tie_head=False, block_size=128,
                 layer_norm_eps=1e-5, **kwargs):
        self.vocab_size, self.d_model, self.n_layer, self.tie_head = vocab_size, d_model, n_layer, tie_head
        self.block_size, self.layer_norm_eps = block_size, layer_norm_eps
        self.hidden_size, self.num_hidden_layers = d_model, n_layer     # transformers' generic names
        kwargs.setdefault("tie_word_embeddings", False)  # a tied head reads the table directly: nothing to tie
        super().__init__(**kwargs)
