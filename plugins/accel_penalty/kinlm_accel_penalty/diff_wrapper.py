"""DiffWrapper: a kinematic mix of every block's output, around any kinlm model.

For block l with output h (B, T, C) (zeros before position 0, so it stays causal):
    dh_t  = h_t - h_{t-1}
    d2h_t = h_t - 2 h_{t-1} + h_{t-2}
    h'_t  = alpha_l h_t + beta_l dh_t + gamma_l d2h_t          (B, T, C)
h' replaces the block's output: it feeds the next block (and the final norm after the last).
alpha, beta, gamma: (n_blocks,), initialised as the source's CustomGPT: alpha = 1 + N(0, 0.02^2),
beta, gamma ~ N(0, 0.02^2) (``init_std: 0``: exactly 1, 0, 0, the identity, as its SmolLM notebook).

The blocks are the model's declared ``block_lists()`` (cvfp: the TokenBlock's layer outputs z^k), else
ModuleLists of the inner model (``blocks``, ``layers``, ``layer``, ``block``,
``h``: gpt, hamiltonian, transformers' GPT-2 ``transformer.h``, Mamba ``backbone.layers``, T5
``encoder.block``/``decoder.block``) or at the paths the config names. Running the inner model,
batch keys, decoding and the inner model's extras are the core's ``ModelWrapper``.
"""

from __future__ import annotations

from importlib import resources

import torch
import torch.nn as nn

from kinlm_core import BLOCK_LIST_NAMES, GPT, HFExport, ModelOutput, ModelWrapper, gpt_hf_export


def shifted(h: torch.Tensor, k: int) -> torch.Tensor:
    """h_{t-k} along dim 1, zeros before t = 0: (B, T, C) -> (B, T, C)."""
    return torch.cat([torch.zeros_like(h[:, :k]), h[:, :-k]], dim=1)[:, : h.size(1)]


def kinematic_mix(h: torch.Tensor, alpha, beta, gamma) -> torch.Tensor:
    """alpha h + beta (h_t - h_{t-1}) + gamma (h_t - 2 h_{t-1} + h_{t-2}) along dim 1, zeros before t = 0."""
    prev, prev2 = shifted(h, 1), shifted(h, 2)                 # h_{t-1}, h_{t-2}: (B, T, C)
    return alpha * h + beta * (h - prev) + gamma * (h - 2 * prev + prev2)


def find_block_lists(model: nn.Module, paths: list[str] | None) -> list[tuple[str, nn.ModuleList]]:
    """The inner model's block lists: the named attribute paths, else the model's declared
    ``block_lists()`` (cvfp: its TokenBlock's layer outputs), else every ModuleList named like a block
    list that is not inside another one."""
    if paths:
        found = []
        for p in paths:
            mod = model
            for part in p.split("."):
                if not hasattr(mod, part):
                    raise ValueError(f"diff_wrapper.blocks: the inner model has no attribute {p!r}")
                mod = getattr(mod, part)
            if not isinstance(mod, (nn.ModuleList, nn.Sequential)):
                raise ValueError(f"diff_wrapper.blocks: {p!r} is a {type(mod).__name__}, not a ModuleList")
            found.append((p, mod))
        return found
    declared = model.block_lists() if hasattr(model, "block_lists") else {}
    if declared:
        return list(declared.items())
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES and len(mod):
            if not any(name.startswith(f + ".") for f, _ in found):
                found.append((name, mod))
    if not found:
        raise ValueError(f"diff_wrapper: found no block list in the inner model ({type(model).__name__}); looked for "
                         f"ModuleLists named {', '.join(BLOCK_LIST_NAMES)}; set model.blocks to their attribute paths")
    return found


class DiffWrapper(ModelWrapper):
    def __init__(self, cfg, inner: nn.Module):
        lists = find_block_lists(inner, cfg.blocks)
        blocks = [b for _, lst in lists for b in lst]
        super().__init__(inner, modules=blocks, memory=2)  # the mix reads h_{t-1} and h_{t-2}
        self.block_paths = [f"{path}.{i}" for path, lst in lists for i in range(len(lst))]
        self.decay = cfg.decay
        n = len(blocks)
        for name, mean in zip(("alpha", "beta", "gamma"), cfg.init):
            t = mean + cfg.init_std * torch.randn(n) if cfg.init_std else torch.full((n,), float(mean))  # (n,)
            if cfg.learnable:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)

    def forward(self, input_ids, output_hidden_states: bool = False, **batch) -> ModelOutput:
        """The inner model, every block l's output h replaced by alpha_l h + beta_l dh + gamma_l d2h."""
        with self.outputs_replaced(batch):
            return self.call_inner(input_ids, output_hidden_states, **batch)

    def replace(self, l: int, h: torch.Tensor, inputs: tuple, batch: dict) -> torch.Tensor:
        """Block l's output h (B, T, C) -> h'_t = alpha_l h_t + beta_l (h_t - h_{t-1})
        + gamma_l (h_t - 2 h_{t-1} + h_{t-2})."""
        return kinematic_mix(h, self.alpha[l], self.beta[l], self.gamma[l])

    @property
    def hf_export(self):
        """``hf_export(tokenizer) -> HFExport``: the inner gpt's custom code plus the mix
        (``kinlm_diff_wrapper``). Only around a `gpt` whose blocks are the ones mixed; otherwise there
        is no such method (the core then keeps safetensors + spec.json)."""
        if not (isinstance(self.inner, GPT) and self._replaced == list(self.inner.blocks)):
            raise AttributeError(f"diff_wrapper: no transformers export around {type(self.inner).__name__} "
                                 "(only around gpt, with its blocks mixed)")
        return self._hf_export

    def _hf_export(self, tokenizer) -> HFExport:
        exp = gpt_hf_export(self.inner, tokenizer)
        name = "kinlm_diff_wrapper"
        files = {**exp.files, **{f: (resources.files("kinlm_accel_penalty") / "hf" / f).read_text(encoding="utf-8")
                                 for f in (f"configuration_{name}.py", f"modeling_{name}.py")}}
        mix = torch.stack([getattr(self, n).detach().to("cpu", torch.float32) for n in ("alpha", "beta", "gamma")])
        notes = ("DiffWrapper (kinlm-accel-penalty) around kinlm's gpt: every block's output h becomes "
                 "alpha h + beta (h_t - h_{t-1}) + gamma (h_t - 2 h_{t-1} + h_{t-2}) (the weight `mix`: "
                 "rows alpha, beta, gamma, one column per block). generate keeps a KV cache and each block's last two outputs.")
        return HFExport(name=name, config=exp.config, config_class="DiffWrapperGPTConfig",
                        model_class="DiffWrapperGPTForCausalLM", files=files, state_dict={**exp.state_dict, "mix": mix},
                        readme_notes=notes)

    def own_decay_param_names(self) -> set[str]:
        """``decay: all``: every parameter (the source's AdamW over model.parameters()); ``mix``: the scalars."""
        if self.decay == "all":
            return {n for n, _ in self.named_parameters()}
        return {n for n in ("alpha", "beta", "gamma") if isinstance(getattr(self, n), nn.Parameter)} \
            if self.decay == "mix" else set()

    def own_no_decay_param_names(self) -> set[str]:
        return {"alpha", "beta", "gamma"} if self.decay == "none" else set()


def build(cfg, vocab_size: int) -> DiffWrapper:
    return DiffWrapper(cfg, cfg.inner.build(vocab_size))
