"""The built-in `hidden_stats` analyzer: per-layer norms and mean pairwise cosine of hidden states."""

from typing import Literal

from pydantic import Field

from kinlm_core.api import AnalyzerConfig


class HiddenStatsConfig(AnalyzerConfig):
    """Per-layer hidden-state norm and mean pairwise cosine, with a plot (any model with hidden states)."""

    type: Literal["hidden_stats"] = "hidden_stats"
    max_tokens: int = Field(128, ge=2, description="tokens of each text analyzed")

    def analyze(self, model, tokenizer, texts, out_dir):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import torch
        import torch.nn.functional as F

        device = next(model.parameters()).device
        limit = min(self.max_tokens, getattr(model, "block_size", self.max_tokens))
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
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        axes[0].plot(n, marker="o")
        axes[0].set(title="mean hidden-state norm", xlabel="layer")
        axes[1].plot(c, marker="o")
        axes[1].set(title="mean pairwise cosine", xlabel="layer")
        fig.tight_layout()
        fig.savefig(out_dir / "hidden_stats.png", dpi=80)
        plt.close(fig)
        return {"norm_first": n[0], "norm_last": n[-1], "cosine_first": c[0], "cosine_last": c[-1],
                "layers": len(n), "texts": len(norms)}
