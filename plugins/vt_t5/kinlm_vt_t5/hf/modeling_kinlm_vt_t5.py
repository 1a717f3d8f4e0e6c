"""kinlm's VT embeddings around T5 as a transformers model (torch and transformers only; exported by
the kinlm-vt-t5 plugin, which never imports this file).

The shared table feeds the encoder and the decoder; both stacks get VT(e) (vt_equation.py) of their
own inputs, the encoder's differences restarting after its padding (attention_mask), the decoder's
after decoder_attention_mask's. Generation keeps no cache: the decoder re-runs its inputs each step
(VT of the newest token reads the one before), the encoder runs once.
"""

from transformers import T5ForConditionalGeneration

from .configuration_kinlm_vt_t5 import VTT5Config
from .vt_equation import VT


class VTT5ForConditionalGeneration(T5ForConditionalGeneration):
    """T5 (parameter names unchanged) plus ``vt`` (``vt.proj`` in concat_project mode)."""

    config_class = VTT5Config

    def __init__(self, config):
        super().__init__(config)
        self.vt = VT(config, config.d_model)
        for stack in (self.encoder, self.decoder):
            stack.register_forward_pre_hook(self._vt_inputs, with_kwargs=True)

    def _vt_inputs(self, stack, args, kwargs):
        """A stack called with input_ids (keyword) gets inputs_embeds = VT(shared(input_ids)) instead."""
        ids = kwargs.get("input_ids")
        if ids is None and args:  # input_ids passed positionally
            ids, args = args[0], (None, *args[1:])
        if ids is None or kwargs.get("inputs_embeds") is not None:
            return None
        kwargs = {**kwargs, "input_ids": None,
                  "inputs_embeds": self.vt(self.shared(ids), kwargs.get("attention_mask"))}
        return args, kwargs

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        """The whole decoder sequence every step, no cache."""
        for key in ("next_sequence_length", "cache", "past_key_values", "cache_position"):
            kwargs.pop(key, None)
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        for key in ("cache", "past_key_values"):
            inputs.pop(key, None)
        inputs["use_cache"] = False
        return inputs

    def forward(self, *args, **kwargs):
        kwargs["use_cache"] = False
        return super().forward(*args, **kwargs)
