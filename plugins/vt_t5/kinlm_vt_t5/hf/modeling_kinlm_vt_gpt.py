"""kinlm's VT embeddings around `gpt` as a transformers model (torch and transformers only; exported
by the kinlm-vt-t5 plugin, which never imports this file): the gpt's token embeddings e become VT(e)
(vt_equation.py) before the positions are added."""

from .configuration_kinlm_vt_gpt import VTGPTConfig
from .modeling_kinlm_gpt import KinlmGPTForCausalLM
from .vt_equation import VT


class VTGPTForCausalLM(KinlmGPTForCausalLM):
    """The gpt (parameter names unchanged) plus ``vt`` (``vt.proj`` in concat_project mode)."""

    config_class = VTGPTConfig

    def __init__(self, config):
        super().__init__(config)
        self.vt = VT(config, config.d_model)
        self.memory = 2 if config.vt_acceleration else 1  # VT reads e_{t-1} (a_t: e_{t-2})

    def transform_embeddings(self, e, attention_mask=None):
        return self.vt(e, attention_mask)
