"""kinlm's DiffWrapper around `gpt` as a transformers model (torch and transformers only; exported by
the kinlm-accel-penalty plugin, which never imports this file).

Every block l's output h (B, T, C), zeros before position 0, is replaced before it feeds block l + 1
(or the final norm):

    h'_t = alpha_l h_t + beta_l (h_t - h_{t-1}) + gamma_l (h_t - 2 h_{t-1} + h_{t-2})
"""

import torch
import torch.nn as nn

from .configuration_kinlm_diff_wrapper import DiffWrapperGPTConfig
from .modeling_kinlm_gpt import KinlmGPTForCausalLM


def shifted(h, k):
    """h_{t-k} along dim 1, zeros before t = 0: (B, T, C) -> (B, T, C)."""
    return torch.cat([torch.zeros_like(h[:, :k]), h[:, :-k]], dim=1)[:, : h.size(1)]


class DiffWrapperGPTForCausalLM(KinlmGPTForCausalLM):
    """The gpt (parameter names unchanged) plus ``mix`` (3, n_layer): rows alpha, beta, gamma. One tensor
    named ``mix``: transformers 4.x renames weights whose names hold "beta" or "gamma" on loading (its
    old LayerNorm names), which would leave separate ``beta``/``gamma`` at their initial values."""

    config_class = DiffWrapperGPTConfig
    memory = 2  # the mix reads h_{t-1} and h_{t-2}

    def __init__(self, config):
        super().__init__(config)
        self.mix = nn.Parameter(torch.cat([torch.ones(1, config.n_layer), torch.zeros(2, config.n_layer)]))

    def transform_block_output(self, i, h):
        prev, prev2 = shifted(h, 1), shifted(h, 2)
        alpha, beta, gamma = self.mix[:, i]
        return alpha * h + beta * (h - prev) + gamma * (h - 2 * prev + prev2)
