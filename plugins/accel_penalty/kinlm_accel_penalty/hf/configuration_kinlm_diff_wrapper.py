"""Configuration of kinlm's DiffWrapper around `gpt` as transformers custom code (a template the
kinlm-accel-penalty plugin exports; kinlm never imports it)."""

from .configuration_kinlm_gpt import KinlmGPTConfig


class DiffWrapperGPTConfig(KinlmGPTConfig):
    """The inner gpt's fields; the mix's alpha, beta, gamma (one per block) are weights."""

    model_type = "kinlm_diff_wrapper"
