"""The core's own components, registered through the same hooks as any plugin."""

from kinlm_core.plugins import hookimpl


@hookimpl
def kinlm_register_models():
    from kinlm_core.data.synthetic import MODELS

    from .fixed_state_config import BaseConvConfig, LinearAttentionConfig
    from .hf_config import TransformersConfig
    from .models import GPTConfig

    return [GPTConfig, TransformersConfig, *MODELS, LinearAttentionConfig, BaseConvConfig]


@hookimpl
def kinlm_register_objectives():
    from kinlm_core.data.synthetic import SupervisedConfig

    from .objectives import CausalLMConfig, SpanCorruptionConfig

    return [CausalLMConfig, SpanCorruptionConfig, SupervisedConfig]


@hookimpl
def kinlm_register_data_sources():
    from kinlm_core.data import sources, synthetic

    return [sources.EmbeddedConfig, sources.TextFilesConfig, sources.JsonlConfig, sources.ParquetConfig,
            sources.HFConfig, synthetic.SyntheticConfig]


@hookimpl
def kinlm_register_tokenizers():
    from kinlm_core.data import synthetic
    from kinlm_core.data import tokenizers as t

    return [t.ByteConfig, t.CharConfig, t.WordConfig, t.BPEConfig, t.HFTokenizerConfig, t.TiktokenConfig,
            synthetic.IdsConfig]


@hookimpl
def kinlm_register_curricula():
    from .curricula import PhasesConfig

    return [PhasesConfig]


@hookimpl
def kinlm_register_analyzers():
    from .analyzers import BlimpConfig, HiddenStatsConfig

    return [HiddenStatsConfig, BlimpConfig]


@hookimpl
def kinlm_register_generators():
    from .generators import SampleConfig

    return [SampleConfig]


@hookimpl
def kinlm_diagnostics():
    from .diagnostics import ENTRIES

    return ENTRIES
