"""The built-in analyzers: `hidden_stats` (per-layer norms and mean pairwise cosine of hidden states)
and `blimp` (grammatical minimal pairs)."""

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from kinlm_core.api import FIGURE_DPI, AnalyzerConfig


class HiddenStatsConfig(AnalyzerConfig):
    """Per-layer hidden-state norm and mean pairwise cosine, with a plot (any model with hidden states)."""

    type: Literal["hidden_stats"] = "hidden_stats"
    max_tokens: int = Field(128, ge=2, description="tokens of each text analyzed")
    title: str | None = Field(None, description="figure title (default: the run and step when a run calls it, "
                                                "else the output folder's name)")

    def analyze(self, model, tokenizer, texts, out_dir):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import torch
        import torch.nn.functional as F

        device = next(model.parameters()).device
        block = getattr(model, "block_size", None)
        limit = self.max_tokens if block is None else min(self.max_tokens, block)
        norms, coss = [], []
        with torch.no_grad():
            for text in texts:
                ids = tokenizer.encode(text)[:limit]
                if len(ids) < 2:
                    continue
                out = model(torch.tensor([ids], device=device), output_hidden_states=True)
                if not out.hidden_states:
                    raise ValueError("hidden_stats needs a model that returns hidden states")
                hs = [h[0].float() for h in out.hidden_states]  # each (T, C), one text at a time: no padding
                norms.append([h.norm(dim=-1).mean().item() for h in hs])
                T = hs[0].size(0)
                off = ~torch.eye(T, dtype=torch.bool, device=device)
                coss.append([(F.normalize(h, dim=-1) @ F.normalize(h, dim=-1).T)[off].mean().item() for h in hs])
        if not norms:
            raise ValueError("hidden_stats: no text with at least 2 tokens")
        n = torch.tensor(norms).mean(0).tolist()
        c = torch.tensor(coss).mean(0).tolist()
        from matplotlib.ticker import MaxNLocator

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        layers = list(range(len(n)))  # 0 = embeddings, L = last block (transformers' convention)
        for ax, ys, what, unit in ((axes[0], n, "mean hidden-state norm", "L2 norm (mean over tokens and texts)"),
                                   (axes[1], c, "mean pairwise cosine", "cosine (mean over pairs of tokens)")):
            ax.plot(layers, ys, marker="o")
            ax.set(title=what, xlabel="layer (0 = embeddings)", ylabel=unit)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(self.title or _title_from(Path(out_dir)) + f"  ({len(norms)} texts)")
        fig.tight_layout()
        fig.savefig(out_dir / "hidden_stats.png", dpi=FIGURE_DPI)
        plt.close(fig)
        return {"norm_first": n[0], "norm_last": n[-1], "cosine_first": c[0], "cosine_last": c[-1],
                "layers": len(n), "texts": len(norms)}


def _title_from(out_dir: Path) -> str:
    """``RUN, step N`` for a run's ``RUN/analysis/<analyzer>/step_NNNNNNN`` folder, else the folder name."""
    m = re.fullmatch(r"step_(\d+)", out_dir.name)
    if m and out_dir.parent.parent.name == "analysis":
        return f"{out_dir.parent.parent.parent.name}, step {int(m.group(1))}"
    return out_dir.resolve().name


class BlimpConfig(AnalyzerConfig):
    """BLiMP accuracy overall, per field and per paradigm, scored as lm-evaluation-harness does
    (see :mod:`kinlm_core.blimp`), with a bar plot per paradigm. Works on decoder models and on
    seq2seq models (T5: the sentence is the decoder's target). ``texts`` are not used."""

    type: Literal["blimp"] = "blimp"
    paradigms: list[str] | None = Field(None, description="paradigms to score (default: all 67)")
    max_pairs: int | None = Field(None, ge=1, description="the first N pairs of each paradigm (default: all 1,000)")
    batch_tokens: int = Field(8192, ge=64, description="tokens per batch (padded), the memory knob")
    seq2seq_input: Literal["sentinel", "empty"] = Field(
        "sentinel", description='seq2seq models: encoder input "sentinel" ([sentinel_0, eos]: the sentence is the '
                                'one masked span) or "empty" ([eos])')

    @field_validator("paradigms")
    @classmethod
    def _known(cls, v):
        from kinlm_core.blimp import unknown_paradigms

        bad = unknown_paradigms(v or [])
        if bad:
            raise ValueError("; ".join(bad))
        return v

    def analyze(self, model, tokenizer, texts, out_dir):
        from kinlm_core import blimp

        metrics = blimp.score(model, tokenizer, self.paradigms, self.max_pairs, self.batch_tokens, self.seq2seq_input)
        blimp.plot(metrics, Path(out_dir) / "blimp.png", title=_title_from(Path(out_dir)))
        return metrics
