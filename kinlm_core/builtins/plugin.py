"""The core's own components, registered through the same hooks as any plugin."""

from kinlm_core.plugins import hookimpl


@hookimpl
def kinlm_register_models():
    from .hf_config import TransformersConfig
    from .models import GPTConfig

    return [GPTConfig, TransformersConfig]


@hookimpl
def kinlm_register_objectives():
    from .objectives import CausalLMConfig, SpanCorruptionConfig

    return [CausalLMConfig, SpanCorruptionConfig]


@hookimpl
def kinlm_register_data_sources():
    from kinlm_core.data import sources

    return [sources.EmbeddedConfig, sources.TextFilesConfig, sources.JsonlConfig, sources.ParquetConfig,
            sources.HFConfig]


@hookimpl
def kinlm_register_tokenizers():
    from kinlm_core.data import tokenizers as t

    return [t.ByteConfig, t.CharConfig, t.WordConfig, t.BPEConfig, t.HFTokenizerConfig, t.TiktokenConfig]


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
