"""The kinlm plugin contract: one pluggy hook per component kind, plus run-lifecycle hooks.

Every ``kinlm_register_*`` hook collects: each plugin returns a list of *config classes*
(pydantic models deriving from the kind's base in :mod:`kinlm_core.api`). A config class is
the whole component: its ``type`` literal is the name used in specs, its fields are the
options, and its ``build(...)`` method imports the heavy (torch) code only when called.
Hook modules and config modules must import without torch.

The lifecycle hooks are called by the run engine with a :class:`kinlm_core.api.RunContext`.
Their return values are ignored.  This file holds the hook specs and nothing else.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("kinlm")


# --- component kinds -----------------------------------------------------------------------


@hookspec
def kinlm_register_models():
    """Called once when the registry is built (first use of any component).

    Return a list of :class:`~kinlm_core.api.ModelConfig` subclasses. ``build(vocab_size)``
    returns a ``torch.nn.Module`` whose ``forward(input_ids, output_hidden_states=False)``
    returns a :class:`~kinlm_core.api.ModelOutput` (logits, optional hidden states per
    layer, optional auxiliary losses).
    """


@hookspec
def kinlm_register_objectives():
    """Called once when the registry is built.

    Return a list of :class:`~kinlm_core.api.ObjectiveConfig` subclasses. ``build(tokenizer)``
    returns an :class:`~kinlm_core.api.Objective`: ``collate(examples, rng)`` turns examples
    (packed rows or documents) into a batch dict, ``loss(model, batch)`` returns a
    :class:`~kinlm_core.api.LossResult` (mean loss, summed nats, target count, bytes covered).
    """


@hookspec
def kinlm_register_regularizers():
    """Called once when the registry is built.

    Return a list of :class:`~kinlm_core.api.RegularizerConfig` subclasses. ``build()``
    returns a callable ``(output, batch, step) -> dict[str, Tensor]`` of named loss terms;
    the engine multiplies each by the config's ``weight``, adds them to the loss and logs
    them under ``reg/<name>``.
    """


@hookspec
def kinlm_register_curricula():
    """Called once when the registry is built.

    Return a list of :class:`~kinlm_core.api.CurriculumConfig` subclasses. ``schedule(max_steps)``
    returns the ordered :class:`~kinlm_core.api.Phase` list the engine walks through (steps,
    token-loss weight, which parameters train).
    """


@hookspec
def kinlm_register_data_sources():
    """Called once when the registry is built.

    Return a list of :class:`~kinlm_core.api.DataSourceConfig` subclasses. ``documents(split)``
    yields the text documents of ``train``, ``validation`` or ``test``.
    """


@hookspec
def kinlm_register_tokenizers():
    """Called once when the registry is built.

    Return a list of :class:`~kinlm_core.api.TokenizerConfig` subclasses. ``build(train_texts,
    cache_dir)`` returns a :class:`~kinlm_core.api.Tokenizer` (encode, decode, vocab_size, eos_id).
    """


@hookspec
def kinlm_register_analyzers():
    """Called once when the registry is built.

    Return a list of :class:`~kinlm_core.api.AnalyzerConfig` subclasses. ``analyze(model,
    tokenizer, texts, out_dir)`` returns a dict of scalar metrics and writes its figures
    (PNG) into ``out_dir``.
    """


@hookspec
def kinlm_register_generators():
    """Called once when the registry is built.

    Return a list of :class:`~kinlm_core.api.GeneratorConfig` subclasses. ``generate(model,
    tokenizer, prompt)`` returns the generated continuation as text.
    """


# --- run lifecycle ---------------------------------------------------------------------------


@hookspec
def kinlm_run_start(run):
    """Called once after the model, data and optimizer are ready, before the first step
    (also on resume). ``run`` is a :class:`~kinlm_core.api.RunContext`. Return value ignored."""


@hookspec
def kinlm_step_end(run, step, metrics):
    """Called after every optimizer step with the 1-based ``step`` and that step's scalar
    ``metrics`` (dict, e.g. ``train/loss``). Return value ignored."""


@hookspec
def kinlm_eval(run, step, metrics):
    """Called after each evaluation with the eval ``metrics`` (``eval/loss``, ``eval/ppl``,
    ``eval/bpb``). Return value ignored."""


@hookspec
def kinlm_checkpoint(run, step, path):
    """Called after a checkpoint directory ``path`` was written atomically at ``step``.
    Return value ignored."""


@hookspec
def kinlm_run_end(run, metrics):
    """Called once when the run ends (finished, preempted or stopped on a bad loss) with the
    final metrics dict (it holds ``status``). Return value ignored."""
