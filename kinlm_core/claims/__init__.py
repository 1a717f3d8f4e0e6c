"""Claims as data: what a method's source claims, the experiment that tests it, and its verdict.

A **claim file** is a JSON object with the key ``"claim"`` (the schema version, ``1``); that key is
how ``kinlm validate`` tells a claim from a spec. Its fields (:class:`Claim`, every model
``extra="forbid"``):

- ``id`` (``plugin.name``), ``title``; ``source``: the ``statement`` in the source's own terms,
  ``where`` the source makes it, and the source's own ``figure`` when there is one;
- ``arms``: specs (paths, see :func:`resolve_spec`) with optional ``set`` overrides (as
  ``--set``), each with a ``role``: one ``treatment``, one ``baseline`` (none for a one-sample
  test against a fixed value) and any number of ``ablation`` arms, reported beside the baseline;
- ``metric`` (:data:`Metric`): a result.json / metrics.jsonl key (last value, or interpolated at
  N tokens seen), tokens seen to reach a target, BLiMP overall or by field, an analyzer's figure,
  a task's accuracy, tokens/s or peak memory;
- ``direction`` (``higher`` / ``lower`` is better for the treatment, ``different``, or
  ``equivalent`` within +-margin) and ``test`` (``auto``: paired by seed when the arms ran the same
  seeds, else Welch; or Welch, paired, one-sample against a value; absolute or log scale, a
  ``margin``: non-inferiority for higher / lower, the TOST bounds for equivalent);
- ``registration``: the pre-registered design (the quoted source and where it stands, the margin's
  reason, the family and why, tuning and verdict seeds, the power; :mod:`.registration`);
- ``controls`` (:class:`Control`): the untrained model, an ablation arm, a count n-gram, each
  shown beside the arms and each able to keep the verdict from ``supported`` (:mod:`.controls`);
- ``manipulation_checks`` (:class:`ManipulationCheck`): that the treatment did what its method
  says (the penalised acceleration lower in the penalised arm), each shown on the card; a failed
  one keeps the verdict from ``supported`` (:mod:`.manipulation`);
- ``tier`` (``cpu``: fits the page's 2-core budget; ``gpu``: runs only when asked for), ``seeds``,
  ``lr_grid`` (each arm's learning rate picked on the tuning seeds' validation loss) and ``fairness``
  (the tolerances and the reasons when arms cannot be matched).

Plugins ship claim files in their package and return their paths from the
``kinlm_register_claims`` hook, the same way for a third party as for the project's own plugins.

Running (:func:`run`): every arm of every claim goes through :mod:`kinlm_core.sweep` into
``OUT/arms/<arm>/``; arms that are the same spec with the same overrides are run once for every
claim that uses them. With an ``lr_grid``, the tuning seeds (``registration.tuning_seeds``; without
a registration, the spec's seed) run at every grid value under ``OUT/arms/<arm>/tuning/``
(``<spec name>/train.lr=V/seed_T``), the value with the lowest mean final validation loss is
chosen (a choice at the grid's edge adds one value beyond it and runs it, at most twice), and the
verdict seeds (``registration.verdict_seeds``; without a registration, the spec's seed upward) run
at it in ``OUT/arms/<arm>/<spec name>/train.lr=V/seed_S``: tuning runs never decide a verdict.
Re-running continues where it stopped.

Reporting (:func:`evaluate`, :func:`decide`, :func:`markdown_card`): the metric per run (one
number per seed), the test the design allows (:mod:`.verdicts`, :mod:`kinlm_core.stats`), Holm's
correction within each claim's family with Benjamini-Hochberg's q across the page beside it, the
registration's state, and a verdict:

- ``supported``: the Holm-adjusted p < alpha on the claimed side (of the margin);
- ``contradicted``: significant on the other side (for margins: the one-sided test beyond it);
- ``inconclusive``: neither; the card gives the 95% CI and the smallest effect the design could
  detect with 80% power at the claim's Holm-adjusted level, for the test used;
- ``not testable``: the metric cannot tell the arms from its floor (a one-sample t-test of each
  arm's per-seed values against chance: BLiMP 0.5, or the metric's ``chance``), or the runs are
  missing.

Planning (``kinlm claims plan``, :mod:`.plan`): the design, the level after Holm in its family and
the power from a pilot's spread, before anything trains.

Torch-free: parameters are counted by ``kinlm params`` in a subprocess when an arm's runs finish.

The package, one module per concern (this module re-exports the public surface, ``__all__``: what
the CLI, tools/results.py and tests use; the rest is the package's own):

- :mod:`.schema`: the claim file's models and :func:`load_claim`;
- :mod:`.discovery`: installed and named claims, :func:`resolve_spec`, :func:`check`;
- :mod:`.arms`: an arm's runs on disk (which count) and :func:`run`;
- :mod:`.metrics`: a claim's metric read from one run directory;
- :mod:`.card`: a claim's card (arms, fairness) and :func:`report`;
- :mod:`.verdicts`: the test the design allows, floors, Holm within families, BH and the verdict;
- :mod:`.registration`: the pre-registered fields' hash, stamped on runs, and its state on a card;
- :mod:`.plan`: ``kinlm claims plan``;
- :mod:`.controls`: the controls beside the arms (untrained, ablation, count n-gram) and their
  rules, and the test split a ``test/X`` metric is read on (evaluated by the report, kept per run);
- :mod:`.manipulation`: the manipulation checks and their rule;
- :mod:`.render`: the card as markdown or JSON, number formatting;
- :mod:`.figures`: a card's curves figure (the grid, the verdict seeds' band, the controls);
- :mod:`.archive`: the seam every read of a run goes through, and the raw archive
  (docs/results/archive.jsonl) a page can be rebuilt from without its runs.
"""

from __future__ import annotations

from .arms import arm_key, run, spec_name
from .card import evaluate, report
from .discovery import Installed, check, installed, listing, resolve_spec, select
from .metrics import blimp_counts, metric_value
from .plan import plan, plan_text
from .registration import registration_hash
from .render import fmt_diff, fmt_p, json_card, markdown_card
from .schema import (
    AnalyzerMetric, Arm, BlimpMetric, Claim, ClaimError, Control, Fairness, Figure, KeyMetric, LrGrid,
    ManipulationCheck, Metric, Registration, ResourceMetric, Source, TaskAccuracy, Test, TokensToTarget, is_claim, load_claim)
from .verdicts import VERDICTS, decide, verdict

__all__ = [
    # the claim file: its schema (a plugin's claim files follow it) and reading one
    "Claim", "ClaimError", "Source", "Figure", "Arm", "Metric", "KeyMetric", "TokensToTarget", "BlimpMetric",
    "AnalyzerMetric", "TaskAccuracy", "ResourceMetric", "Test", "LrGrid", "Fairness", "Registration", "Control",
    "ManipulationCheck", "is_claim", "load_claim",
    # the pre-registered design (`kinlm claims plan`) and its hash
    "registration_hash", "plan", "plan_text",
    # which claims there are (`kinlm claims`, `kinlm validate`)
    "Installed", "installed", "select", "resolve_spec", "check", "listing",
    # their runs (`kinlm claims run`): where an arm's runs live, training what is missing
    "arm_key", "spec_name", "run",
    # their cards (`kinlm claims report`, tools/results.py)
    "metric_value", "blimp_counts", "evaluate", "decide", "verdict", "VERDICTS", "report", "markdown_card",
    "json_card", "fmt_diff", "fmt_p",
]
