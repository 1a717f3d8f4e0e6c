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
    returns a ``torch.nn.Module`` whose ``forward(input_ids, output_hidden_states=False, ...)``
    returns a :class:`~kinlm_core.api.ModelOutput` (logits, optional hidden states per
    layer, auxiliary losses, metrics). The engine passes every batch key the signature names
    (``attention_mask``, ``document_ids``, ``decoder_input_ids`` ...). Optional: ``block_size``
    (None: no context limit), ``bind_tokenizer(tokenizer)``, ``decode(input_ids, state)``.
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
    returns a callable ``(output, batch, step) -> dict[str, Tensor]`` of named loss terms:
    ``output`` is the model's ModelOutput (hidden states when ``needs_hidden_states``), ``batch``
    the batch dict (masks and ``document_ids`` where the objective makes them). The engine
    multiplies each term by the config's ``weight``, adds it to the loss and logs it unweighted
    under ``reg/<name>``; keys starting with ``metrics/`` are only logged (per-layer values, say).
    """


@hookspec
def kinlm_register_curricula():
    """Called once when the registry is built.

    Return a list of :class:`~kinlm_core.api.CurriculumConfig` subclasses. ``schedule(max_steps)``
    returns the ordered :class:`~kinlm_core.api.Phase` list the engine walks through: each phase's
    length (steps, epochs or an ``until`` condition), objective, data order, optimizer settings,
    trainable parameters, active regularizers and, optionally, its own step function.
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
    cache_dir)`` returns a :class:`~kinlm_core.api.Tokenizer` (encode, decode, vocab_size and the
    special ids eos_id, pad_id, bos_id, sentinel_ids).
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


@hookspec
def kinlm_register_claims():
    """Called when claims are listed, run or reported (``kinlm claims``, ``kinlm validate``).

    Return a list of paths: claim files (JSON objects with the key ``"claim"``, see
    :mod:`kinlm_core.claims`) or folders whose ``*.json`` files are claims, usually the plugin's
    own ``claims/`` folder (``Path(__file__).parent / "claims"``; ship it as package data). Each
    claim states what the plugin's method claims, in its source's terms, and the experiment that
    tests it: arms (specs with overrides), metric, direction, test and tier.
    """


@hookspec
def kinlm_diagnostics():
    """Called when the synthetic diagnostic suite is planned, run or reported (``kinlm diagnose``).

    Return a list of entries (plain dicts, checked by :mod:`kinlm_core.diagnose.registry`): an
    *architecture* ``{"architecture": NAME, "model": {...}, ...}`` (the model spec the suite trains, its
    regularizers, the state knob it sweeps on the state-size curve and a ``state_numbers`` function), or
    a *task* ``{"task": NAME, "data": {...}, "tiers": {...}, ...}`` (a small config over a data source
    that generates the task's documents, usually one the plugin registers). See docs/diagnostics.md.
    """


# --- run lifecycle ---------------------------------------------------------------------------


@hookspec
def kinlm_run_start(run):
    """Called once on every rank after the model, data and optimizer are ready, before the first
    step (also on resume). ``run`` is a :class:`~kinlm_core.api.RunContext` (``run.is_main`` is
    True on rank 0, the one that writes files). Return value ignored."""


@hookspec
def kinlm_step_end(run, step, metrics):
    """Called on every rank after every optimizer step with the 1-based ``step`` and that step's
    scalar ``metrics`` (dict, e.g. ``train/loss``; that rank's values). Return value ignored.

    The values are Python floats at the logging steps (every ``train.log_every`` steps and the last
    one). At the other steps the standard step's loss, terms and ``train/grad_norm`` are 0-dim tensors
    on the run's device, so that the step never waits for the device: reading one (``float(v)``,
    ``v.item()``, formatting it) makes the host wait for the GPU, so a hook that needs a value every
    step costs that wait; one that reads ``metrics`` only at logging steps, or not at all (e.g.
    clamping a parameter), costs nothing. ``train/lr`` and ``train/phase`` are always plain numbers."""


@hookspec
def kinlm_eval(run, step, metrics):
    """Called on every rank after each evaluation with the eval ``metrics`` (``eval/loss``,
    ``eval/ppl`` and, where the objective gives it a meaning, ``eval/bpb``). Return value ignored."""


@hookspec
def kinlm_checkpoint(run, step, path):
    """Called on rank 0 (the rank that writes) after a checkpoint directory ``path`` was written
    atomically at ``step``. Return value ignored.

    With ``train.async_checkpoint`` (on by default on CUDA) a background thread writes the checkpoint
    while training goes on; the hook is still called on the training thread, after the rename: at
    the end of the first step after the write completed, or when the run waits for the write (the
    next checkpoint, a signal, the run's end). ``step`` is the checkpoint's step, which may be
    earlier than the run's current step."""


@hookspec
def kinlm_run_end(run, metrics):
    """Called once on every rank when the run ends (finished, preempted or stopped on a bad loss)
    with the final metrics dict (it holds ``status``). Return value ignored."""
