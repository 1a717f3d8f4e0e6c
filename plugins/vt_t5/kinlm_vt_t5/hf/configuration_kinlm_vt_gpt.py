"""Configuration of kinlm's VT embeddings around `gpt` as transformers custom code (a template the
kinlm-vt-t5 plugin exports; kinlm never imports it)."""

from .configuration_kinlm_gpt import KinlmGPTConfig


class VTGPTConfig(KinlmGPTConfig):
    """The inner gpt's fields plus VT's: vt_mode (add, concat_project, replace), vt_w, vt_acceleration,
    vt_reset (differences restart after padding)."""

    model_type = "kinlm_vt_gpt"

    def __init__(self, vt_mode="add", vt_w=0.2, vt_acceleration=False, vt_reset=True, **kwargs):
        self.vt_mode, self.vt_w, self.vt_acceleration, self.vt_reset = vt_mode, vt_w, vt_acceleration, vt_reset
        super().__init__(**kwargs)
