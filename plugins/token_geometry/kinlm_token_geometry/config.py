"""Configs of the `llama_like` model and the `token_geometry` analyzer (torch-free; the torch code
is imported inside ``build`` / ``analyze``).

Defaults reproduce the source's paper setting (nikitus20/llama-token-geometry at d1c904ea,
train_postln_model.sh): PostLN, RMSNorm, SwiGLU, 6 layers, 6 heads, d 384, context 256, dropout 0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    """Per layer: mean off-diagonal token cosine (mean/std over prompts), norms, update norms, optional gradient norms; heatmaps; model comparisons.

    Every prompt runs through the model alone (batch of one), so no padding ever enters a metric.
    Hidden states follow transformers' convention: index 0 = the embeddings, the last = after the
    final norm. ``metrics.json`` holds ``mean_cosine_per_layer``, ``std_cosine_per_layer``,
    ``norm_per_layer``, ``std_norm_per_layer``, ``update_norm_per_layer`` (index 0 is null: no
    update into the embeddings), ``grad_norm_per_layer`` (when asked) and scalar summaries.
    """

    type: Literal["token_geometry"] = "token_geometry"
    max_tokens: int = Field(128, ge=2, description="tokens of each prompt analysed (also capped by the model's block_size)")
    max_prompts: int | None = Field(None, ge=1, description="analyse at most this many prompts (None: all)")
    prompts: list[str] | None = Field(None, description="analyse these texts instead of those the caller hands over "
                                      "(e.g. the evolution experiment's one fixed prompt)")
    packaged_prompts: bool = Field(False, description="analyse the 87 WikiText-2 validation excerpts shipped with the "
                                   "plugin (the source's data/prompts.txt) instead of the caller's texts")
    gradient_norm: bool = Field(False, description="also compute ||dCE/dh_l|| per layer (needs next-token logits)")
    heatmap_layers: list[int] | None = Field(None, description="hidden-state indices of the similarity heatmaps "
                                             "(None: 0, L/4, L/2 and the last); negative counts from the end")
    heatmap_prompt: int = Field(0, ge=0, description="which prompt the heatmaps show")
    heatmap_tokens: int = Field(32, ge=2, description="tokens shown in a heatmap (first n of that prompt)")
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
