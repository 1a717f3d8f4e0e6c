"""Configuration of kinlm's VT embeddings around T5 as transformers custom code (a template the
kinlm-vt-t5 plugin exports; kinlm never imports it)."""

from transformers import T5Config


class VTT5Config(T5Config):
    """T5's fields plus VT's: vt_mode (add, concat_project, replace), vt_w, vt_acceleration, vt_reset."""

    model_type = "kinlm_vt_t5"

    def __init__(self, vt_mode="add", vt_w=0.2, vt_acceleration=False, vt_reset=True, **kwargs):
        self.vt_mode, self.vt_w, self.vt_acceleration, self.vt_reset = vt_mode, vt_w, vt_acceleration, vt_reset
        kwargs["use_cache"] = False  # VT reads e_{t-1}: the decoder re-runs its inputs each step
        super().__init__(**kwargs)
