"""The claim file's schema (every model ``extra="forbid"``; each field documented where it is
declared) and reading one file, with errors that name the file and the JSON path."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1
BLIMP_FIELDS = ("morphology", "syntax", "semantics", "syntax_semantics")


class ClaimError(Exception):
    """Bad claim input: one line per problem, each naming the file (and JSON path)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# --- the schema -----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Figure(_Model):
    """A number the source reports for this claim, in its own units."""

    value: float = Field(description="the number as the source reports it")
    unit: str = Field("", description="its unit or kind, e.g. '% loss vs its transformer', '% of d'")
    text: str = Field(description="what the number is, in the source's terms (setting, model, data)")
    compare: Literal["difference", "treatment", "none"] = Field(
        "none", description="what it is comparable to on the card: our difference (treatment - baseline, in "
        "the test's units), our treatment arm's mean, or nothing (a different setting)")


class Source(_Model):
    statement: str = Field(description="the claim in the source's own terms")
    where: str = Field(description="where the source makes it (repository, file or section, commit)")
    figure: Figure | None = Field(None, description="the source's own figure, when there is one")


class Arm(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$", description="short name, unique within the claim")
    role: Literal["baseline", "treatment", "ablation"] = Field(
        description="treatment: what the claim is about; baseline: what it is compared with; ablation: "
        "reported beside them against the baseline, not part of the verdict")
    spec: str = Field(description="the spec file: absolute, or relative to the claim file, its plugin package, "
                      "the current folder or the kinlm repository (the first that exists)")
    set: list[str] = Field(default_factory=list, description="overrides KEY=VALUE, as `kinlm run --set`")
    label: str = Field("", description="how the card names the arm (default: its name)")


class KeyMetric(_Model):
    """A number a run logged: result.json's key if it has one (and no ``at_tokens``), else the last
    metrics.jsonl record with it; with ``at_tokens``, interpolated linearly in tokens seen."""

    kind: Literal["key"] = "key"
    key: str = Field(description="e.g. eval/bpb, eval/loss, fixed_point/effective_rank_pct")
    at_tokens: float | None = Field(None, gt=0, description="interpolate at this many tokens seen (None: the last)")
    chance: float | None = Field(None, description="the metric's floor (chance level): when no arm differs from it "
                                 "the claim is not testable")

    def label(self) -> str:
        return self.key + (f" at {self.at_tokens:,.0f} tokens" if self.at_tokens else "")


class TokensToTarget(_Model):
    """Tokens seen until ``key`` first reaches ``target`` (interpolated between evaluations); a run
    that never reaches it counts at its last tokens seen (a lower bound), and the card says so."""

    kind: Literal["tokens_to_target"] = "tokens_to_target"
    key: str = Field("eval/bpb", description="the curve: a metrics.jsonl key logged with eval/tokens_seen")
    target: float | Literal["baseline_final"] = Field(
        "baseline_final", description="the value to reach; baseline_final: the baseline arm's mean last value")
    lower_is_better: bool = Field(True, description="the key improves downward (a loss)")

    def label(self) -> str:
        t = "the baseline's final value" if self.target == "baseline_final" else f"{self.target:g}"
        return f"tokens seen until {self.key} reaches {t}"


class BlimpMetric(_Model):
    """BLiMP accuracy from the run's newest analysis/blimp/step_*/metrics.json (chance 0.5)."""

    kind: Literal["blimp"] = "blimp"
    field: Literal["overall", "morphology", "syntax", "semantics", "syntax_semantics"] = "overall"

    def label(self) -> str:
        return f"BLiMP {self.field}"


class AnalyzerMetric(_Model):
    """A number from an analyzer's metrics.json (analysis/<analyzer>/step_*/metrics.json)."""

    kind: Literal["analyzer"] = "analyzer"
    analyzer: str = Field(description="the analyzer's type (its folder under analysis/)")
    key: str = Field(description="dotted path into its metrics.json, e.g. effective_rank_pct")
    at: Literal["last", "first"] = Field("last", description="the newest step's metrics, or the first's")
    chance: float | None = Field(None, description="the metric's floor, as for `key`")

    def label(self) -> str:
        return f"{self.analyzer}: {self.key}" + (" (first step)" if self.at == "first" else "")


class TaskAccuracy(_Model):
    """A synthetic task's accuracy (the diagnostics' ``eval/accuracy``), with its chance level."""

    kind: Literal["task_accuracy"] = "task_accuracy"
    key: str = Field("eval/accuracy", description="the metrics.jsonl key")
    chance: float | None = Field(None, ge=0, le=1, description="accuracy by guessing (1 / choices)")

    def label(self) -> str:
        return self.key


class ResourceMetric(_Model):
    """Speed or memory: result.json's tokens_per_s, or the largest perf/peak_mem_mb logged. Use
    ``test.scale: "log"`` to compare them as a ratio."""

    kind: Literal["resource"] = "resource"
    what: Literal["tokens_per_s", "peak_memory_mb"]

    def label(self) -> str:
        return {"tokens_per_s": "training tokens/s", "peak_memory_mb": "peak memory (MB)"}[self.what]


Metric = Annotated[Union[KeyMetric, TokensToTarget, BlimpMetric, AnalyzerMetric, TaskAccuracy, ResourceMetric],
                   Field(discriminator="kind")]


class Test(_Model):
    kind: Literal["auto", "welch", "paired", "one_sample"] = Field(
        "auto", description="auto: paired when both arms ran the same seeds (a seed fixes a run's initialisation "
        "and data order, so the arms' runs pair by seed), else Welch; welch: the arms' seeds are independent "
        "samples; paired: runs pair by seed; one_sample: the treatment against `value`")
    alpha: float = Field(0.05, gt=0, lt=1, description="level after Holm's correction within the claim's family")
    scale: Literal["absolute", "log"] = Field(
        "absolute", description="log: compare logarithms, so the difference is a ratio (reported as ratio - 1)")
    margin: float = Field(0.0, ge=0, description="direction higher / lower: how much worse (test units) the "
                          "treatment may be and still support the claim: 0 tests superiority (two-sided), > 0 "
                          "non-inferiority (one-sided, TOST's half); direction equivalent: the +-margin the "
                          "difference must lie within (TOST)")
    value: float | None = Field(None, description="one_sample: the fixed value (e.g. a failure threshold)")


class LrGrid(_Model):
    values: list[float] = Field(min_length=2, max_length=5, description="learning rates tried on the tuning seeds "
                                "(registration.tuning_seeds; without them the spec's seed); a choice at the grid's "
                                "edge extends it by one value beyond, at most twice")
    key: str = Field("train.lr", description="the spec path the values set")
    select_on: str = Field("eval/loss", description="the last value of this metrics.jsonl key, averaged over the "
                           "tuning seeds, picks the rate (lowest)")


class Fairness(_Model):
    non_embedding_tolerance: float = Field(0.10, ge=0, description="arms' non-embedding parameters within this share "
                                           "of the baseline's")
    equal_tokens: bool = Field(True, description="the arms are meant to see the same tokens")
    tokens_note: str = Field("", description="why the arms cannot see equal tokens (shown on the card)")
    params_note: str = Field("", description="why the parameters cannot be matched (shown on the card)")
    lr_note: str = Field("", description="why there is no lr grid (shown on the card)")


class Registration(_Model):
    """The pre-registered design, written before the claim's runs (a claim edited after its runs
    exist is reported as changed: :mod:`.registration`). Kept apart from the fields the runner and
    the test read so that it can be hashed and shown as one block."""

    status: Literal["before_runs", "after_exploratory_runs"] = Field(
        description="before_runs: written before any run of the claim; after_exploratory_runs: written after "
        "exploratory runs (on whatever seeds), so the verdict is never called pre-registered")
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="when the design was registered (YYYY-MM-DD)")
    quote: str = Field(min_length=1, description="the source's statement, quoted verbatim")
    quote_where: str = Field(min_length=1, description="where the quote stands: repository, file, and commit or "
                             "section")
    margin_reason: str = Field(min_length=1, description="why test.margin is what it is: the source's own figure, "
                               "a stated smallest effect of interest, or why 0 (superiority)")
    family: str | None = Field(None, pattern=r"^[a-z0-9_.]+$", description="the family Holm's correction runs "
                               "within (default: the claim's source, the id's plugin part)")
    family_reason: str = Field(min_length=1, description="why the claim is corrected with that family")
    tuning_seeds: list[int] = Field(default_factory=list, description="seeds that pick the learning rate (and "
                                    "any other choice); they should never be verdict seeds")
    verdict_seeds: list[int] = Field(min_length=2, description="the seeds the verdict is decided on")
    effect_of_interest: float | None = Field(None, gt=0, description="the smallest difference (test units) the "
                                             "design is meant to detect (None: the margin, else the source's figure)")
    planned_power: float = Field(0.8, gt=0, lt=1, description="the power the design aims for at that effect")
    power_note: str = Field("", description="the power the design has, as far as known at registration "
                            "(`kinlm claims plan` estimates it from a pilot's variance)")

    @model_validator(mode="after")
    def _seeds(self):
        for name in ("tuning_seeds", "verdict_seeds"):
            xs = getattr(self, name)
            if len(set(xs)) != len(xs):
                raise ValueError(f"{name} repeats a seed")
        both = sorted(set(self.tuning_seeds) & set(self.verdict_seeds))
        if both and self.status == "before_runs":
            raise ValueError(f"tuning_seeds and verdict_seeds share seed {', '.join(map(str, both))}: a claim "
                             "registered before_runs picks its choices on seeds that never decide its verdict")
        return self


# --- controls (#30 item 3): what could produce the claim's result alone --------------------------


class Control(_Model):
    """A control the card shows beside the arms, with its decision rule (:mod:`.controls`):

    - ``untrained``: the treatment's own step-0 weights, evaluated the same way. Its values come
      from each treatment run: for a claim metric ``eval/X`` or ``test/X`` read at the end, by
      ``kinlm eval RUN --untrained`` on that split; otherwise from ``metric``, the figure the run
      itself records at step 0 (an analyzer that also runs at ``start``, read ``at: "first"``; a
      curriculum's initial figure). A supported verdict needs the treatment to beat it.
    - ``ablation``: ``arm`` names an arm of the claim (role ``ablation`` or ``baseline``): the
      method's component off. A supported verdict needs the treatment to beat it.
    - ``ngram``: a count n-gram (``order`` 1 or 2, add-``k``) fitted on each neural arm's training
      split with its tokenizer, scored on the test split (``kinlm eval RUN --ngram``). Every run of
      the treatment and the baseline must have a lower test loss, else the claim is not testable at
      this budget."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$", description="short name, unique among the claim's arms and controls")
    role: Literal["untrained", "ablation", "ngram"]
    label: str = Field("", description="how the card names the control (default: its name)")
    arm: str | None = Field(None, description="ablation: the name of the claim's arm that is the ablation")
    metric: Metric | None = Field(None, description="untrained: the figure the treatment's runs record at step 0, "
                                  "when the claim's metric is not an eval/ or test/ key read at the end")
    order: Literal[1, 2] = Field(2, description="ngram: 1 unigram, 2 bigram")
    k: float = Field(0.01, gt=0, description="ngram: add-k smoothing")

    @model_validator(mode="after")
    def _fields_of_role(self):
        if (self.arm is not None) != (self.role == "ablation"):
            raise ValueError("`arm` names the arm of an ablation control, and only of one")
        if self.metric is not None and self.role != "untrained":
            raise ValueError("`metric` is for an untrained control only")
        if self.role != "ngram" and {"order", "k"} & self.model_fields_set:
            raise ValueError("`order` and `k` are for an ngram control only")
        return self


class ManipulationCheck(_Model):
    """A check that the treatment did what its method says it does (#30 item 6), e.g. that the
    penalised acceleration is lower in the penalised arm. ``metric`` is read from every run of the
    treatment and of the compared arm (``arm``, default the baseline) as a claim's metric is, and
    tested as the claim's arms are (paired by seed where both ran the same seeds, else Welch; two-sided
    at the claim's alpha, unadjusted). A check that is not significant on its ``direction``, or that
    cannot be computed, keeps the verdict from "supported" (:mod:`.manipulation`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$", description="short name, unique among the claim's arms, "
                      "controls and checks")
    label: str = Field("", description="how the card names the check (default: its name)")
    metric: Metric = Field(description="the figure the check reads from each run (e.g. an analyzer's)")
    direction: Literal["higher", "lower", "different"] = Field(
        description="what the treatment's figure must be against the compared arm's")
    arm: str | None = Field(None, description="the arm the treatment is compared with (None: the baseline)")
    why: str = Field("", description="what the check shows when it passes (shown on the card)")


def end_key_split(metric) -> str | None:
    """"validation" or "test" when the metric is an ``eval/`` or ``test/`` key read at the end (one
    number a ``kinlm eval`` of the final weights gives), else None."""
    if isinstance(metric, KeyMetric) and not metric.at_tokens:
        return {"eval": "validation", "test": "test"}.get(metric.key.split("/", 1)[0]) if "/" in metric.key else None
    return None


class Claim(_Model):
    claim: Literal[1] = Field(description="the claim schema version; this key marks a JSON file as a claim")
    id: str = Field(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$", description="plugin.name, unique among installed claims")
    title: str
    source: Source
    arms: list[Arm] = Field(min_length=1)
    metric: Metric
    direction: Literal["higher", "lower", "different", "equivalent"] = Field(
        description="what the claim says of the treatment's metric against the baseline (or the value); "
        "equivalent: within +-test.margin of it (TOST)")
    test: Test = Field(default_factory=Test)
    tier: Literal["cpu", "gpu"] = Field(description="cpu: inside the page's budget on 2 CPU cores; gpu: on request")
    seeds: int = Field(3, ge=2, le=20, description="seeds per arm")
    lr_grid: LrGrid | None = Field(None, description="each arm's learning rate picked from these (None: the specs')")
    fairness: Fairness = Field(default_factory=Fairness)
    budget_minutes: float | None = Field(None, ge=0, description="estimated minutes of its own runs on 2 CPU cores "
                                         "(0: its arms are run for another claim)")
    notes: list[str] = Field(default_factory=list, description="what the card should say besides the numbers")
    registration: Registration | None = Field(None, description="the pre-registered design (None: not registered; "
                                              "the card says so)")
    controls: list[Control] = Field(default_factory=list, description="the controls that could produce the result "
                                    "alone, shown beside the arms; each can keep the verdict from 'supported'")
    manipulation_checks: list[ManipulationCheck] = Field(
        default_factory=list, description="checks that the treatment did what its method says (the penalised "
        "quantity lower in the penalised arm, ...), shown on the card; a failed one keeps the verdict from 'supported'")

    @model_validator(mode="after")
    def _check(self):
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm names must be unique: {', '.join(dup)}")
        roles = [a.role for a in self.arms]
        if roles.count("treatment") != 1:
            raise ValueError(f"exactly one arm needs role 'treatment' ({roles.count('treatment')} found)")
        if self.test.kind == "one_sample":
            if self.test.value is None:
                raise ValueError("test.value is needed by a one_sample test")
            if roles.count("baseline") > 1:
                raise ValueError("at most one arm may have role 'baseline'")
        elif roles.count("baseline") != 1:
            raise ValueError(f"a {self.test.kind} test needs exactly one arm with role 'baseline' "
                             f"({roles.count('baseline')} found)")
        if self.test.kind != "one_sample" and self.test.value is not None:
            raise ValueError("test.value is for one_sample tests only")
        if self.test.margin and (self.direction == "different" or self.test.kind == "one_sample"):
            raise ValueError("test.margin is for a two-arm test of direction higher, lower or equivalent")
        if self.direction == "equivalent" and not self.test.margin:
            raise ValueError("direction 'equivalent' needs test.margin > 0 (the +-margin of the TOST)")
        if self.direction == "equivalent" and self.test.scale == "log" and self.test.margin >= 1:
            raise ValueError("direction 'equivalent' on the log scale needs test.margin < 1 (ratio 1 - margin > 0)")
        if self.registration and len(self.registration.verdict_seeds) != self.seeds:
            raise ValueError(f"registration.verdict_seeds lists {len(self.registration.verdict_seeds)} seeds, "
                             f"seeds says {self.seeds}")
        if (self.lr_grid and self.registration and self.registration.status == "before_runs"
                and not self.registration.tuning_seeds):
            raise ValueError("registration.tuning_seeds is empty: the lr grid needs the seeds it is picked on "
                             "(apart from verdict_seeds)")
        if (isinstance(self.metric, TokensToTarget) and self.metric.target == "baseline_final"
                and "baseline" not in roles):
            raise ValueError("metric.target 'baseline_final' needs a baseline arm")
        return self

    @model_validator(mode="after")
    def _check_controls(self):
        if isinstance(self.metric, KeyMetric) and self.metric.key.startswith("test/") and self.metric.at_tokens:
            raise ValueError("metric: a test/ key has no at_tokens (the test split is evaluated once, on the final "
                             "weights)")
        arms = {a.name: a for a in self.arms}
        names = [*arms, *(c.name for c in self.controls)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"control names must differ from each other and from the arms': {', '.join(dup)}")
        checks = [m.name for m in self.manipulation_checks]
        dup = sorted({n for n in checks if checks.count(n) > 1 or n in names})
        if dup:
            raise ValueError(f"manipulation_checks names must differ from each other and from the arms' and "
                             f"controls': {', '.join(dup)}")
        treatment = self.arm("treatment")
        for m in self.manipulation_checks:
            against = m.arm if m.arm is not None else (self.arm("baseline").name if self.arm("baseline") else None)
            if against is None:
                raise ValueError(f"manipulation check {m.name}: the claim has no baseline arm; name the compared arm "
                                 "with `arm`")
            if against not in arms or against == treatment.name:
                raise ValueError(f"manipulation check {m.name}: arm {against!r} is not an arm of the claim other than "
                                 "the treatment")
        for c in self.controls:
            if c.role == "ablation" and (c.arm not in arms or arms[c.arm].role not in ("ablation", "baseline")):
                raise ValueError(f"control {c.name}: arm {c.arm!r} is not an arm of the claim with role ablation or "
                                 "baseline")
            if c.role in ("untrained", "ablation") and self.direction == "equivalent":
                raise ValueError(f"control {c.name}: an {c.role} control must be beaten on the claimed side, and an "
                                 "equivalence claim has none (direction higher, lower or different)")
            if c.role == "untrained" and c.metric is None and end_key_split(self.metric) is None:
                raise ValueError(f"control {c.name}: an untrained control needs `metric` (the figure the runs record "
                                 f"at step 0) unless the claim's metric is an eval/ or test/ key read at the end")
        return self

    def arm(self, role: str) -> Arm | None:
        return next((a for a in self.arms if a.role == role), None)

    def family(self) -> str:
        """The family Holm's correction runs within: the registration's, else the claim's source
        (the plugin part of its id)."""
        return (self.registration.family if self.registration and self.registration.family
                else self.id.split(".", 1)[0])


# --- reading a file ---------------------------------------------------------------------------


def is_claim(data) -> bool:
    """A JSON document is a claim when it is an object with the key "claim"."""
    return isinstance(data, dict) and "claim" in data


def _loc(loc) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def load_claim(path) -> Claim:
    """Read and validate one claim file; :class:`ClaimError` names the file and JSON path."""
    from ..errors import SpecError
    from ..userjson import read

    path = Path(path)
    try:
        data = read(path, "a claim")  # the depth-limited loader of every user JSON
    except SpecError as e:
        raise ClaimError(e.problems) from None
    if not is_claim(data):
        raise ClaimError([f"{path}: not a claim (a claim file is a JSON object with the key \"claim\")"])
    try:
        return Claim.model_validate(data)
    except ValidationError as e:
        raise ClaimError([f"{path}: {_loc(err['loc'])}: {err['msg']}" for err in e.errors()]) from None
