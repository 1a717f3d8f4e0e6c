"""Configs of the `llama_like` model and the `token_geometry` analyzer (torch-free; the torch code
is imported inside ``build`` / ``analyze``).

Defaults reproduce the source's model (nikitus20/llama-token-geometry at d1c904ea): its GPTConfig's
SwiGLU, RMSNorm, initial norm, eps 1e-6, init 0.02, and its train.py's PostLN, 6 layers, 6 heads,
d 384, dropout 0.1, weight decay on every parameter. Its train_postln_model.sh passes no
--use-swiglu, so the paper spec picks the GELU preset Standard-PostLN.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from kinlm_core import AnalyzerConfig, ModelConfig

PRESETS: dict[str, dict] = {
    "LLaMA-PreLN": {"placement": "preln", "norm": "rmsnorm", "mlp": "swiglu"},
    "LLaMA-PostLN": {"placement": "postln", "norm": "rmsnorm", "mlp": "swiglu"},
    "LLaMA-PeriLN": {"placement": "periln", "norm": "rmsnorm", "mlp": "swiglu"},
    "LLaMA-MixLN": {"placement": "mixln", "norm": "rmsnorm", "mlp": "swiglu"},
    "Standard-PreLN": {"placement": "preln", "norm": "rmsnorm", "mlp": "gelu"},
    "Standard-PostLN": {"placement": "postln", "norm": "rmsnorm", "mlp": "gelu"},
}
"""The source's six named architectures: what each fixes (everything else stays configurable)."""

PresetName = Literal["LLaMA-PreLN", "LLaMA-PostLN", "LLaMA-PeriLN", "LLaMA-MixLN", "Standard-PreLN", "Standard-PostLN"]


class LlamaLikeConfig(ModelConfig):
    """Configurable LLaMA-like decoder: PreLN/PostLN/PeriLN/MixLN blocks, RMSNorm or LayerNorm, SwiGLU or GELU, learned or rotary positions.

    ``preset`` picks one of the source's six architectures by name and fills ``placement``,
    ``norm`` and ``mlp``; giving one of those as well with a different value is an error.
    No biases anywhere; the output head is tied to the token embedding.
    """

    type: Literal["llama_like"] = "llama_like"
    provides: ClassVar[dict[str, str]] = {
        "hidden_states": "the embeddings, the block outputs and the final norm of the last",
        "input_embeddings": "tok_emb, the token table (tied to the head), before learned positions",
        "blocks": "the n_layer blocks (`blocks`), whatever their norm placement"}
    preset: PresetName | None = Field(
        None, description="named architecture: " + ", ".join(f"{k} ({v['placement']}, {v['norm']}, {v['mlp']})"
                                                            for k, v in PRESETS.items()) + "; None: use the fields")
    placement: Literal["preln", "postln", "periln", "mixln"] = Field(
        "postln", description="where the norms sit in a block: preln x+F(N(x)); postln N(x+F(x)); "
        "periln P(x+F(N(x))); mixln: postln for the first floor(mixln_split*L) blocks, preln after")
    norm: Literal["rmsnorm", "layernorm"] = Field("rmsnorm", description="normalisation layer (LayerNorm without bias)")
    mlp: Literal["swiglu", "gelu"] = Field("swiglu", description="feed-forward: SwiGLU (hidden floor(8/3 d)) or GELU (hidden 4d)")
    mlp_hidden: int | None = Field(None, ge=1, description="feed-forward hidden width (None: floor(8/3 d) for swiglu, 4d for gelu)")
    positions: Literal["learned", "rope"] = Field("learned", description="learned absolute position embedding, or rotary (RoPE) in attention")
    rope_base: float = Field(10000.0, gt=0, description="RoPE frequency base (positions='rope')")
    n_layer: int = Field(6, ge=1, description="number of blocks L")
    n_head: int = Field(6, ge=1, description="attention heads")
    d_model: int = Field(384, ge=2, description="residual width d")
    block_size: int = Field(256, ge=2, description="longest context (size of the learned position table)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the embeddings, attention weights and residual branches")
    embed_norm: bool = Field(True, description="normalise the embeddings before the first block (the source's use_initial_ln)")
    mixln_split: float = Field(0.25, ge=0, le=1, description="mixln: fraction of blocks (from the bottom) that are postln")
    norm_eps: float = Field(1e-6, gt=0, description="epsilon of every norm")
    init_std: float = Field(0.02, gt=0, description="std of the normal init; residual output projections use init_std/sqrt(2L)")
    residual_init: Literal["source", "all"] = Field(
        "source", description="which residual output projections get N(0, init_std/sqrt(2L)): source = those its name "
        "test matches (attention proj and GELU's down; its SwiGLU down_proj keeps init_std) or all = SwiGLU's down "
        "too (GPT-2's rule, which the source's comment intends)")
    decay: Literal["all", "matrices"] = Field(
        "all", description="which parameters AdamW's weight decay reaches: all (the source: AdamW(model.parameters()), "
        "norms and embeddings included) or matrices (kinlm's rule for other models: never norms or embeddings; the "
        "benchmark specs use it so that every method trains with one recipe)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        name = data["preset"]
        if name not in PRESETS:
            return data  # the Literal check names the allowed values
        data = dict(data)
        for k, v in PRESETS[name].items():
            if k in data and data[k] != v:
                raise ValueError(f"preset {name} sets {k}={v!r} but {k}={data[k]!r} was given; drop one of them")
            data[k] = v
        return data

    @model_validator(mode="after")
    def _check_heads(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.positions == "rope" and (self.d_model // self.n_head) % 2:
            raise ValueError(f"positions='rope' needs an even head dim; d_model/n_head = {self.d_model // self.n_head}")
        return self

    def hidden_width(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return int(8 * self.d_model / 3) if self.mlp == "swiglu" else 4 * self.d_model

    def block_placements(self) -> list[str]:
        """The placement of each block, bottom to top (mixln resolved)."""
        if self.placement != "mixln":
            return [self.placement] * self.n_layer
        k = int(self.n_layer * self.mixln_split)
        return ["postln"] * k + ["preln"] * (self.n_layer - k)

    def build(self, vocab_size: int):
        from .model import LlamaLike

        return LlamaLike(self, vocab_size)


class TokenGeometryConfig(AnalyzerConfig):
    """Per layer: within-text pairwise cosine, Ethayarajh's anisotropy, intra-sentence and self-similarity (raw and anisotropy-adjusted), norms, update norms, optional gradient norms; heatmaps; model comparisons.

    Every prompt runs through the model alone (batch of one), so no padding ever enters a metric.
    ``layers`` chooses the states: the model's hidden states (index 0 = the embeddings, the last =
    after the final norm; any model) or the source's (each block's output, then the final norm;
    llama_like). ``metrics.json`` holds ``pairwise_cosine_per_layer`` (the source's cosine_sim),
    ``anisotropy_per_layer``, ``intra_similarity_per_layer``, ``self_similarity_per_layer`` and their
    ``*_adjusted_per_layer`` (minus the anisotropy), ``norm_per_layer``, ``update_norm_per_layer``
    (index 0 is null), ``grad_norm_per_layer`` (when asked), ``std_*`` over prompts and scalar summaries.
    """

    type: Literal["token_geometry"] = "token_geometry"
    layers: Literal["hidden_states", "source"] = Field(
        "hidden_states", description="which states are analysed: hidden_states = the model's output_hidden_states "
        "(0 = embedding output, then blocks 1..L-1, the last = final norm of block L; works on any model, kinlm's "
        "default) or source = the source's forward hooks (block outputs 0..L-1, then the final norm as L; needs a "
        "model with .blocks and .norm_f, i.e. llama_like)")
    max_tokens: int | None = Field(128, ge=2, description="tokens of each prompt analysed, also capped by the model's "
                                   "block_size (None: the whole prompt up to block_size, as the source)")
    max_prompts: int | None = Field(None, ge=1, description="analyse at most this many prompts (None: all)")
    prompts: list[str] | None = Field(None, description="analyse these texts instead of those the caller hands over "
                                      "(e.g. the evolution experiment's one fixed prompt)")
    packaged_prompts: bool = Field(False, description="analyse the 87 WikiText-2 validation excerpts shipped with the "
                                   "plugin (the source's data/prompts.txt) instead of the caller's texts")
    self_similarity_min_contexts: int = Field(
        5, ge=2, description="Ethayarajh's self-similarity averages over the token ids that occur in at least this many "
        "different texts (his words occur in at least 5 contexts); a token's first occurrence in a text counts")
    gradient_norm: bool = Field(False, description="also compute ||dCE/dh_l|| per layer (needs next-token logits)")
    heatmap_layers: list[int] | None = Field(None, description="indices of the similarity heatmaps (None: 0, n//4, "
                                             "n//2 and n-1 of the n analysed states, as the source); negative counts from the end")
    heatmap_prompt: int = Field(0, ge=0, description="which prompt the heatmaps show")
    heatmap_tokens: int = Field(32, ge=2, description="tokens shown in a heatmap (first n of that prompt; the source "
                                "cut its heatmap prompt to 50 characters)")
    differences: list[tuple[str, str]] | None = Field(
        None, description="model pairs (a, b) compared as a - b by analyze_many (None: the source's three pairs when "
        "those preset names are present, else every model minus the first)")
    figures: bool = Field(True, description="write the PNG figures (False: numbers, CSV and similarity.npz only; faster)")
    evolution: bool = Field(True, description="in a run: also plot this analysis against the run's first one "
                            "(analysis/token_geometry/step_*), the before/after figure")

    def analyze(self, model, tokenizer, texts: list[str], out_dir: Path) -> dict:
        from .analysis import analyze

        return analyze(self, model, tokenizer, texts, Path(out_dir))

    def analyze_many(self, models: dict, texts: list[str], out_dir: Path) -> dict:
        from .analysis import analyze_many

        return analyze_many(self, models, texts, Path(out_dir))
