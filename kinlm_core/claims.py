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
- ``direction`` (``higher`` / ``lower`` is better for the treatment, or ``different``) and
  ``test`` (Welch, paired by seed, or one-sample against a value; absolute or log scale, a
  non-inferiority ``margin``);
- ``tier`` (``cpu``: fits the page's 2-core budget; ``gpu``: runs only when asked for), ``seeds``,
  ``lr_grid`` (each arm's learning rate picked on one seed's validation loss) and ``fairness``
  (the tolerances and the reasons when arms cannot be matched).

Plugins ship claim files in their package and return their paths from the
``kinlm_register_claims`` hook, the same way for a third party as for the project's own plugins.

Running (:func:`run`): every arm of every claim goes through :mod:`kinlm_core.sweep` into
``OUT/arms/<arm>/``; arms that are the same spec with the same overrides are run once for every
claim that uses them. With an ``lr_grid``, the first seed runs at every grid value
(``<spec name>/train.lr=V/seed_S``), the value with the lowest final validation loss is chosen,
and every seed runs at it (the first seed's run is reused). Re-running continues where it stopped.

Reporting (:func:`evaluate`, :func:`decide`, :func:`markdown_card`): the metric per run, the test
(:mod:`kinlm_core.stats`), Holm's correction across the claims reported together, and a verdict:

- ``supported``: the adjusted p < alpha and the difference lies on the claimed side of the margin;
- ``contradicted``: the adjusted p < alpha and it lies on the other side;
- ``inconclusive``: neither; the card states the smallest difference the design could detect with
  80% power;
- ``not testable``: the metric cannot tell the arms from its floor (BLiMP: neither arm's pooled
  pairs differ from chance by a binomial test; a metric with a ``chance`` level: neither arm's
  values differ from it), or the runs are missing.

Torch-free: parameters are counted by ``kinlm params`` in a subprocess when an arm's runs finish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import stats

log = logging.getLogger("kinlm.claims")

SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
VERDICTS = ("supported", "contradicted", "inconclusive", "not testable")
BLIMP_FIELDS = ("morphology", "syntax", "semantics", "syntax_semantics")
TOKENS_TOLERANCE = 0.01  # arms whose mean tokens seen differ by more than this share are "not at equal tokens"


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
    kind: Literal["welch", "paired", "one_sample"] = Field(
        "welch", description="welch: the arms' seeds are independent samples; paired: runs pair by seed offset; "
        "one_sample: the treatment against `value`")
    alpha: float = Field(0.05, gt=0, lt=1, description="level after Holm's correction across the page")
    scale: Literal["absolute", "log"] = Field(
        "absolute", description="log: compare logarithms, so the difference is a ratio (reported as ratio - 1)")
    margin: float = Field(0.0, ge=0, description="how much worse (in the claimed direction, test units) the "
                          "treatment may be and still support the claim: 0 tests superiority, > 0 non-inferiority")
    value: float | None = Field(None, description="one_sample: the fixed value (e.g. a failure threshold)")


class LrGrid(_Model):
    values: list[float] = Field(min_length=2, max_length=5, description="learning rates tried on the first seed")
    key: str = Field("train.lr", description="the spec path the values set")
    select_on: str = Field("eval/loss", description="the last value of this metrics.jsonl key picks the rate (lowest)")


class Fairness(_Model):
    non_embedding_tolerance: float = Field(0.10, ge=0, description="arms' non-embedding parameters within this share "
                                           "of the baseline's")
    equal_tokens: bool = Field(True, description="the arms are meant to see the same tokens")
    tokens_note: str = Field("", description="why the arms cannot see equal tokens (shown on the card)")
    params_note: str = Field("", description="why the parameters cannot be matched (shown on the card)")
    lr_note: str = Field("", description="why there is no lr grid (shown on the card)")


class Claim(_Model):
    claim: Literal[1] = Field(description="the claim schema version; this key marks a JSON file as a claim")
    id: str = Field(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$", description="plugin.name, unique among installed claims")
    title: str
    source: Source
    arms: list[Arm] = Field(min_length=1)
    metric: Metric
    direction: Literal["higher", "lower", "different"] = Field(
        description="what the claim says of the treatment's metric against the baseline (or the value)")
    test: Test = Field(default_factory=Test)
    tier: Literal["cpu", "gpu"] = Field(description="cpu: inside the page's budget on 2 CPU cores; gpu: on request")
    seeds: int = Field(3, ge=2, le=20, description="seeds per arm")
    lr_grid: LrGrid | None = Field(None, description="each arm's learning rate picked from these (None: the specs')")
    fairness: Fairness = Field(default_factory=Fairness)
    budget_minutes: float | None = Field(None, ge=0, description="estimated minutes of its own runs on 2 CPU cores "
                                         "(0: its arms are run for another claim)")
    notes: list[str] = Field(default_factory=list, description="what the card should say besides the numbers")

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
            raise ValueError("test.margin is for a two-arm test of direction higher or lower")
        if (isinstance(self.metric, TokensToTarget) and self.metric.target == "baseline_final"
                and "baseline" not in roles):
            raise ValueError("metric.target 'baseline_final' needs a baseline arm")
        return self

    def arm(self, role: str) -> Arm | None:
        return next((a for a in self.arms if a.role == role), None)


# --- files and the registry ---------------------------------------------------------------------


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
    from .errors import SpecError
    from .userjson import read

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


@dataclass
class Installed:
    claim: Claim
    path: Path  # the claim file
    dist: str  # the distribution that registered it ("" for a file named on the command line)


def _claim_files(paths) -> list[Path]:
    out = []
    for p in paths or []:
        p = Path(p)
        out += sorted(p.glob("*.json")) if p.is_dir() else [p]
    return out


def installed(manager=None) -> tuple[list[Installed], list[str]]:
    """Every claim the installed plugins register (``kinlm_register_claims``), and the problems
    (a plugin whose hook fails, a bad claim file, two claims with one id), each on one line. A
    bad claim is reported and left out; the others are kept."""
    if manager is None:
        from .plugins import get_manager

        manager = get_manager()
    found: list[Installed] = []
    problems: list[str] = []
    for impl in manager.pm.hook.kinlm_register_claims.get_hookimpls():
        dist = impl.plugin_name
        try:
            paths = _claim_files(impl.function())
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the others
            problems.append(f"{dist}: kinlm_register_claims failed: {type(e).__name__}: {e}")
            continue
        for p in paths:
            try:
                found.append(Installed(load_claim(p), p, dist))
            except ClaimError as e:
                problems += [f"{dist}: {m}" for m in e.problems]
    seen: dict[str, Installed] = {}
    unique = []
    for c in found:
        prev = seen.get(c.claim.id)
        if prev is not None:
            problems.append(f"claim '{c.claim.id}' is registered twice: {prev.path} ({prev.dist}) and {c.path} "
                            f"({c.dist})")
            continue
        seen[c.claim.id] = c
        unique.append(c)
    return sorted(unique, key=lambda c: c.claim.id), problems


def select(names, manager=None, all_installed: bool = False) -> list[Installed]:
    """The claims named by ids of installed claims or paths of claim files (ClaimError for a name
    that is neither, with the nearest ids)."""
    import difflib

    have, skipped = installed(manager)
    for p in skipped:  # a plugin's broken claim file: left out, said once
        log.warning("kinlm claims: %s", p)
    by_id = {c.claim.id: c for c in have}
    if all_installed:
        return have
    out, problems = [], []
    for n in names:
        if n in by_id:
            out.append(by_id[n])
        elif Path(n).is_file():
            try:
                out.append(Installed(load_claim(n), Path(n), ""))
            except ClaimError as e:
                problems += e.problems
        else:
            near = difflib.get_close_matches(n, list(by_id), n=3)
            problems.append(f"kinlm claims: {n}: no installed claim with this id and no such file"
                            + (f" (did you mean {', '.join(near)}?)" if near else " (`kinlm claims` lists them)"))
    if problems:
        raise ClaimError(problems)
    return out


def resolve_spec(spec: str, claim_path: Path) -> Path:
    """An arm's spec file: absolute; else relative to the claim file's folder, its plugin package
    (the folder above ``claims/``), the current folder, then the kinlm repository."""
    p = Path(spec)
    if p.is_absolute():
        return p
    here = Path(claim_path).resolve().parent
    bases = [here, here.parent if here.name == "claims" else here, Path.cwd(), REPO]
    for b in bases:
        if (b / p).is_file():
            return b / p
    return REPO / p


def check(inst: Installed, manager=None) -> list[str]:
    """Problems of a validated claim beyond its schema: every arm's spec must load with its
    overrides (and with each lr grid value)."""
    from .spec import SpecError, load_spec

    problems = []
    c = inst.claim
    for i, arm in enumerate(c.arms):
        sp = resolve_spec(arm.spec, inst.path)
        where = f"{inst.path}: arms[{i}] ({arm.name})"
        if not sp.is_file():
            problems.append(f"{where}: spec {arm.spec}: no such file")
            continue
        sets = list(arm.set)
        if c.lr_grid:
            sets.append(f"{c.lr_grid.key}={c.lr_grid.values[0]}")
        try:
            load_spec(sp, sets, manager)
        except SpecError as e:
            problems += [f"{where}: {m}" for m in e.problems]
        except (OSError, ValueError) as e:
            problems.append(f"{where}: {e}")
    return problems


# --- runs ---------------------------------------------------------------------------------------


def arm_key(arm: Arm, claim_path: Path) -> str:
    """The arm's folder under OUT/arms: the spec's stem and a hash of the spec file and overrides,
    so claims that share an arm share its runs."""
    sp = resolve_spec(arm.spec, claim_path)
    try:
        ident = str(sp.resolve().relative_to(REPO))
    except ValueError:
        ident = str(sp.resolve())
    h = hashlib.sha1(json.dumps([ident, sorted(arm.set)]).encode()).hexdigest()[:8]
    return f"{sp.stem}-{h}"


def _grid_value(v: float) -> str:
    return json.dumps(v)


def _records(run: Path) -> list[dict]:
    out = []
    f = run / "metrics.jsonl"
    for line in (f.read_text().splitlines() if f.exists() else []):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _result(run: Path) -> dict:
    try:
        return json.loads((run / "result.json").read_text())
    except (OSError, ValueError):
        return {}


def _seed_runs(folder: Path) -> list[Path]:
    """Finished runs ``folder/seed_S`` (by seed)."""
    runs = []
    for d in folder.glob("seed_*"):
        if d.is_dir() and _result(d).get("status") == "finished":
            runs.append(d)
    return sorted(runs, key=lambda d: int(d.name.split("_", 1)[1]) if d.name.split("_", 1)[1].lstrip("-").isdigit() else 0)


def _last(records: list[dict], key: str):
    val = None
    for r in records:
        if isinstance(r.get(key), (int, float)):
            val = float(r[key])
    return val


@dataclass
class ArmRuns:
    arm: Arm
    folder: Path  # OUT/arms/<key>
    spec_name: str
    runs: list[Path] = field(default_factory=list)
    grid: dict[str, float | None] = field(default_factory=dict)  # grid value -> first seed's select_on value
    grid_runs: dict[str, Path] = field(default_factory=dict)  # grid value -> the first seed's run
    chosen: str | None = None
    problem: str | None = None
    stale: list[str] = field(default_factory=list)  # runs left out: their spec is not the arm's today


def spec_name(arm: Arm, claim_path: Path) -> str:
    sp = resolve_spec(arm.spec, claim_path)
    try:
        name = json.loads(sp.read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    for s in arm.set:
        if s.startswith("name="):
            name = s.split("=", 1)[1]
    from .sweep import safe

    return safe(name or sp.stem)


def stale_keys(run: Path, spec: Path, overrides: list[str]) -> list[str]:
    """The spec keys where ``run``'s spec.json differs from what the arm's spec file and overrides
    (and the run's seed) give today: non-empty when the spec changed after the run. Keys the run's
    spec.json lacks (fields added since, at their defaults then) do not count."""
    from .spec import diff_keys, dump, load_spec

    try:
        old = json.loads((run / "spec.json").read_text())
        now = dump(load_spec(spec, [*overrides, f"seed={old.get('seed')}"], check_requires=False))
    except Exception as e:  # noqa: BLE001 - an unreadable spec is a stale run, said on the card
        return [f"(cannot compare: {e})"]

    def has(d, dotted):
        for part in dotted.split("."):
            if not isinstance(d, dict) or part not in d:
                return False
            d = d[part]
        return True

    return [k for k in diff_keys(old, now) if has(old, k)]


def _fresh(runs: list[Path], arm: Arm, claim_path: Path, extra: list[str], ar: "ArmRuns") -> list[Path]:
    """The runs whose spec is the arm's today; the others are left out with a problem on the card."""
    spec = resolve_spec(arm.spec, claim_path)
    keep = []
    for r in runs:
        keys = stale_keys(r, spec, [*arm.set, *extra])
        if keys:
            ar.stale.append(f"{r} ({', '.join(keys[:4])})")
        else:
            keep.append(r)
    return keep


def arm_runs(claim: Claim, arm: Arm, claim_path: Path, out: Path, seeds: int | None = None) -> ArmRuns:
    """The arm's finished runs the report uses (at the chosen learning rate, with a grid); runs
    made from an earlier version of the arm's spec are left out (``stale``)."""
    folder = Path(out) / "arms" / arm_key(arm, claim_path)
    name = spec_name(arm, claim_path)
    ar = ArmRuns(arm, folder, name)
    base = folder / name
    if claim.lr_grid:
        g = claim.lr_grid
        for v in g.values:
            key = f"{g.key}={_grid_value(v)}"
            first = next(iter(_fresh(_seed_runs(base / key)[:1], arm, claim_path, [key], ar)), None)
            ar.grid[_grid_value(v)] = _last(_records(first), g.select_on) if first else None
            if first:
                ar.grid_runs[_grid_value(v)] = first
        done = {k: v for k, v in ar.grid.items() if v is not None}
        if len(done) < len(g.values):
            ar.problem = (f"arm {arm.name}: the lr grid is not finished ({len(done)} of {len(g.values)} values have "
                          f"a first-seed run with {g.select_on})")
            return ar
        ar.chosen = min(done, key=lambda k: (done[k], float(k)))
        base = base / f"{g.key}={ar.chosen}"
    chosen = [f"{claim.lr_grid.key}={ar.chosen}"] if claim.lr_grid else []
    ar.runs = _fresh(_seed_runs(base), arm, claim_path, chosen, ar)
    if seeds is not None:
        ar.runs = ar.runs[:seeds]
    return ar


# --- running ------------------------------------------------------------------------------------


def _sweep(spec: Path, seeds: int, grid: list[str], sets: list[str], out: Path, parallel, echo, manager) -> int:
    from . import sweep as sw

    out_dir, points = sw.plan([str(spec)], seeds, grid, sets, out, manager)
    return sw.run(out_dir, points, sw.device_groups(parallel), echo=echo)


def _count_params(run: Path, dest: Path, echo) -> None:
    """``kinlm params RUN --json`` -> dest (total and non-embedding parameters of the arm's model)."""
    r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "params", str(run), "--json"], capture_output=True,
                       text=True)
    if r.returncode:
        echo(f"    (parameters not counted: kinlm params {run} exited {r.returncode}: "
             f"{(r.stderr.strip().splitlines() or [''])[-1]})")
        return
    data = json.loads(r.stdout)
    dest.write_text(json.dumps({k: data[k] for k in ("total", "embedding", "non_embedding", "vocab_size")
                                if k in data}, indent=2) + "\n")


def run(selected: list[Installed], out, seeds: int | None = None, tier: str = "cpu", parallel="1",
        echo=print, manager=None) -> int:
    """Train what the claims' arms still miss (see the module docstring). Returns 0 when every arm
    finished, 1 when some point failed, 75 when interrupted."""
    from .sweep import EXIT_PREEMPTED

    out = Path(out)
    done: set[tuple] = set()
    rc = 0
    for inst in selected:
        c = inst.claim
        if c.tier == "gpu" and tier != "gpu":
            echo(f"{c.id}: tier gpu, skipped (run it with --tier gpu)")
            continue
        n = seeds or c.seeds
        echo(f"{c.id}: {len(c.arms)} arm(s) x {n} seeds" + (f", lr grid {c.lr_grid.values}" if c.lr_grid else ""))
        for arm in c.arms:
            key = (arm_key(arm, inst.path), json.dumps(c.lr_grid.model_dump() if c.lr_grid else None), n)
            if key in done:
                continue
            done.add(key)
            spec = resolve_spec(arm.spec, inst.path)
            folder = out / "arms" / key[0]
            echo(f"  arm {arm.name} ({arm.role}): {arm.spec}" + (f" --set {' --set '.join(arm.set)}" if arm.set else "")
                 + f" -> {folder}")
            if c.lr_grid:
                g = c.lr_grid
                code = _sweep(spec, 1, [f"{g.key}=" + ",".join(_grid_value(v) for v in g.values)], list(arm.set),
                              folder, parallel, echo, manager)
                if code == EXIT_PREEMPTED:
                    return code
                ar = arm_runs(c, arm, inst.path, out)
                if ar.chosen is None:
                    echo(f"    {ar.problem}")
                    rc = 1
                    continue
                echo(f"    lr grid on the first seed ({g.select_on}): "
                     + ", ".join(f"{k}: {v:.4f}" for k, v in ar.grid.items()) + f" -> {ar.chosen}")
                code = _sweep(spec, n, [f"{g.key}={ar.chosen}"], list(arm.set), folder, parallel, echo, manager)
            else:
                code = _sweep(spec, n, [], list(arm.set), folder, parallel, echo, manager)
            if code == EXIT_PREEMPTED:
                return code
            rc = rc or code
            ar = arm_runs(c, arm, inst.path, out)
            if ar.runs and not (folder / "params.json").exists():
                _count_params(ar.runs[0], folder / "params.json", echo)
    return rc


# --- metrics ------------------------------------------------------------------------------------


def _interp(curve: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of (tokens, value) at x (None outside the curve)."""
    curve = sorted(curve)
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if curve and curve[-1][0] == x:
        return curve[-1][1]
    return None


def _curve(records: list[dict], key: str) -> list[tuple[float, float]]:
    out, tokens = [], None
    for r in records:
        if "perf/tokens_seen" in r:
            tokens = r["perf/tokens_seen"]
        if isinstance(r.get(key), (int, float)):
            t = r.get("eval/tokens_seen", r.get("perf/tokens_seen", tokens))
            if t is not None:
                out.append((float(t), float(r[key])))
    return out


def _crossing(curve, target: float, lower: bool) -> float | None:
    """The tokens seen at which the curve first reaches target (linear between points)."""
    prev = None
    for t, v in sorted(curve):
        if (v <= target) if lower else (v >= target):
            if prev is None:
                return t
            (t0, v0) = prev
            return t0 + (t - t0) * (target - v0) / (v - v0) if v != v0 else t
        prev = (t, v)
    return None


def _analysis(run: Path, name: str, at: str = "last") -> dict | None:
    def step(f: Path) -> int:
        n = f.parent.name.split("_", 1)[1]
        return int(n) if n.isdigit() else -1

    files = sorted((run / "analysis" / name).glob("step_*/metrics.json"), key=step)
    if not files:
        return None
    try:
        return json.loads(files[-1 if at == "last" else 0].read_text())
    except (OSError, ValueError):
        return None


def _dotted(data, path: str):
    """The number at a dotted path of a JSON document, or None."""
    from .compare import lookup

    cur = lookup(data, path)
    return float(cur) if isinstance(cur, (int, float)) and not isinstance(cur, bool) else None


def blimp_counts(data: dict, fld: str) -> tuple[int, int] | None:
    """(correct, pairs) of a BLiMP metrics.json, overall or for one field (pairs per paradigm are
    equal, so a field's pairs are its share of the paradigms)."""
    from .blimp import PARADIGMS

    pairs = data.get("pairs")
    if not isinstance(pairs, int) or pairs <= 0:
        return None
    present = [p for p in PARADIGMS if isinstance(data.get(p), (int, float))]
    if fld == "overall" or not present:
        acc = data.get(fld)
        if not isinstance(acc, (int, float)) or fld != "overall":
            return None
        return round(acc * pairs), pairs
    per = pairs / len(present)
    mine = [p for p in present if PARADIGMS[p] == fld]
    return round(sum(data[p] * per for p in mine)), round(per * len(mine))


def metric_value(metric, run: Path, target: float | None = None) -> tuple[float | None, str | None]:
    """(value, note) of one run; value None when the run lacks it. ``target``: tokens_to_target's
    resolved target value."""
    if isinstance(metric, (KeyMetric, TaskAccuracy)):
        recs = _records(run)
        if isinstance(metric, KeyMetric) and metric.at_tokens:
            v = _interp(_curve(recs, metric.key), metric.at_tokens)
            return v, None if v is not None else f"{run}: {metric.key} not logged around {metric.at_tokens:,.0f} tokens"
        res = _result(run)
        if isinstance(res.get(metric.key), (int, float)):
            return float(res[metric.key]), None
        v = _last(recs, metric.key)
        return v, None if v is not None else f"{run}: no {metric.key} in result.json or metrics.jsonl"
    if isinstance(metric, TokensToTarget):
        curve = _curve(_records(run), metric.key)
        if not curve or target is None:
            return None, f"{run}: no {metric.key} curve"
        t = _crossing(curve, target, metric.lower_is_better)
        if t is None:
            return max(x for x, _ in curve), "censored"
        return t, None
    if isinstance(metric, BlimpMetric):
        data = _analysis(run, "blimp")
        if data is None:
            return None, f"{run}: no analysis/blimp"
        v = data.get(metric.field)
        return (float(v), None) if isinstance(v, (int, float)) else (None, f"{run}: BLiMP has no {metric.field}")
    if isinstance(metric, AnalyzerMetric):
        data = _analysis(run, metric.analyzer, metric.at)
        if data is None:
            return None, f"{run}: no analysis/{metric.analyzer}"
        v = _dotted(data, metric.key)
        return v, None if v is not None else f"{run}: {metric.analyzer}'s metrics.json has no number at {metric.key}"
    if isinstance(metric, ResourceMetric):
        if metric.what == "tokens_per_s":
            v = _result(run).get("tokens_per_s")
            return (float(v), None) if isinstance(v, (int, float)) else (None, f"{run}: no tokens_per_s")
        vals = [float(r["perf/peak_mem_mb"]) for r in _records(run) if isinstance(r.get("perf/peak_mem_mb"), (int, float))]
        return (max(vals), None) if vals else (None, f"{run}: no perf/peak_mem_mb logged")
    raise TypeError(metric)


# --- the card -----------------------------------------------------------------------------------


def _params(folder: Path, runs: list[Path]) -> dict:
    try:
        return json.loads((folder / "params.json").read_text())
    except (OSError, ValueError):
        total = _result(runs[0]).get("params") if runs else None
        return {"total": total, "non_embedding": None}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def evaluate(inst: Installed, out, seeds: int | None = None) -> dict:
    """One claim's card before the page's correction: arms, fairness, the comparison (or why
    there is none). :func:`decide` adds the verdict."""
    c = inst.claim
    out = Path(out)
    card: dict = {"id": c.id, "title": c.title, "plugin": inst.dist, "file": str(inst.path), "tier": c.tier,
                  "source": c.source.model_dump(), "metric": c.metric.label(), "metric_spec": c.metric.model_dump(),
                  "direction": c.direction, "test": c.test.model_dump(), "arms": [], "notes": list(c.notes),
                  "fairness": [], "problems": [], "comparison": None, "ablations": [], "floor": None,
                  "verdict": None, "reason": "", "difference": None, "ci95": None, "p": None, "p_adjusted": None}
    arms = {a.name: arm_runs(c, a, inst.path, out, seeds) for a in c.arms}
    # tokens_to_target's target: the baseline's mean last value of the key
    target = None
    if isinstance(c.metric, TokensToTarget):
        if c.metric.target == "baseline_final":
            b = arms[c.arm("baseline").name]
            target = _mean([_last(_records(r), c.metric.key) for r in b.runs])
        else:
            target = float(c.metric.target)
        card["target"] = target
    values: dict[str, list[float | None]] = {}
    for a in c.arms:
        ar = arms[a.name]
        vals, notes, censored = [], [], 0
        for r in ar.runs:
            v, note = metric_value(c.metric, r, target)
            vals.append(v)
            if note == "censored":
                censored += 1
            elif note:
                notes.append(note)
        values[a.name] = vals
        res = [_result(r) for r in ar.runs]
        params = _params(ar.folder, ar.runs)
        seeds_seen = []
        for r in ar.runs:
            try:
                seeds_seen.append(json.loads((r / "spec.json").read_text()).get("seed"))
            except (OSError, ValueError):
                seeds_seen.append(None)
        m, sd, n = _mean_sd(vals)
        card["arms"].append({
            "name": a.name, "label": a.label or a.name, "role": a.role, "spec": a.spec, "set": a.set,
            "folder": str(ar.folder), "runs": [str(r) for r in ar.runs], "seeds": seeds_seen, "values": vals,
            "grid_runs": {k: str(r) for k, r in ar.grid_runs.items()},
            "mean": m, "sd": sd, "n": n, "censored": censored,
            "tokens_seen": _mean([x.get("tokens_seen") for x in res]),
            "params_total": params.get("total"), "params_non_embedding": params.get("non_embedding"),
            "lr": {"grid": ar.grid, "chosen": ar.chosen, "key": c.lr_grid.key, "select_on": c.lr_grid.select_on,
                   "metric": {k: metric_value(c.metric, r, target)[0] for k, r in ar.grid_runs.items()}}
            if c.lr_grid else {"fixed": _lookup_lr(inst, a), "note": c.fairness.lr_note},
            "problem": ar.problem})
        card["problems"] += ([ar.problem] if ar.problem else []) + notes[:3]
        if ar.stale:
            card["problems"].append(f"arm {a.name}: {len(ar.stale)} run(s) left out, made from an earlier version of "
                                    f"its spec (delete them and run again): " + "; ".join(ar.stale[:2]))
        if censored:
            card["notes"].append(f"{a.name}: {censored} of {len(ar.runs)} runs never reached the target; counted at "
                                 "their last tokens seen (a lower bound)")
    _fairness(c, card)
    if isinstance(c.metric, TokensToTarget):
        c, values = _censored_basis(c, card, arms, values)
    _compare(c, card, values)
    return card


def _censored_basis(c: Claim, card: dict, arms: dict, values: dict):
    """tokens_to_target when a treatment run never reached the target: its tokens are only a lower
    bound (biased toward the claim), so the verdict compares the arms' final value of the key at
    equal tokens instead; the tokens stay on the card (``tokens_values``)."""
    tr = next(a for a in card["arms"] if a["role"] == "treatment")
    if not tr["censored"]:
        return c, values
    key = c.metric.key
    finals = {a.name: [_last(_records(r), key) for r in arms[a.name].runs] for a in c.arms}
    for a in card["arms"]:
        a["tokens_values"] = a["values"]
        a["values"] = finals[a["name"]]
        a["mean"], a["sd"], a["n"] = _mean_sd(finals[a["name"]])
    flip = {"lower": "higher", "higher": "lower"}
    card["direction"] = c.direction if c.metric.lower_is_better else flip.get(c.direction, c.direction)
    card["metric"] = f"final {key} (tokens to the target were censored)"
    card["test"] = {**card["test"], "margin": 0.0}
    card["basis"] = "final"
    card["notes"].append(
        f"The treatment did not reach the target in {tr['censored']} of {len(tr['tokens_values'])} runs, so its tokens "
        f"to the target are only a lower bound; the verdict compares the final {key} at equal tokens instead "
        f"({'lower' if c.metric.lower_is_better else 'higher'} is better). Tokens to the target, per arm: "
        + "; ".join(f"{a['name']} " + ", ".join(_count(round(v)) if v is not None else "-" for v in a["tokens_values"])
                    for a in card["arms"]) + ".")
    test = c.test.model_copy(update={"margin": 0.0})
    return c.model_copy(update={"test": test, "direction": card["direction"]}), finals


def _lookup_lr(inst: Installed, arm: Arm):
    for s in arm.set:
        if s.startswith("train.lr="):
            return float(s.split("=", 1)[1])
    try:
        return json.loads(resolve_spec(arm.spec, inst.path).read_text()).get("train", {}).get("lr")
    except (OSError, ValueError, AttributeError):
        return None


def _mean_sd(vals):
    xs = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return m, sd, len(xs)


def _fairness(c: Claim, card: dict) -> None:
    base = next((a for a in card["arms"] if a["role"] == "baseline"), None)
    lines = card["fairness"]
    if c.lr_grid:
        grid = [_grid_value(v) for v in sorted(c.lr_grid.values)]
        for a in card["arms"]:
            ch = a["lr"].get("chosen")
            if ch is not None and len(grid) > 1 and ch in (grid[0], grid[-1]):
                lines.append(f"{a['name']}'s best rate {ch} is at the {'top' if ch == grid[-1] else 'bottom'} of the "
                             "grid: a rate beyond it might do better")
    if base is None:
        return
    tol = c.fairness.non_embedding_tolerance
    for a in card["arms"]:
        if a is base:
            continue
        ne, bne = a["params_non_embedding"], base["params_non_embedding"]
        if ne and bne:
            ratio = ne / bne
            a["params_ratio"] = ratio
            if abs(ratio - 1) > tol:
                lines.append(f"parameters not matched: {a['name']} has {ratio:.2f}x the baseline's non-embedding "
                             f"parameters ({ne:,} vs {bne:,}; tolerance {tol:.0%})"
                             + (f": {c.fairness.params_note}" if c.fairness.params_note else ""))
        elif a["runs"] and base["runs"]:
            lines.append(f"non-embedding parameters not counted for {a['name']} or the baseline "
                         "(params.json is written by `kinlm claims run`)")
        t, bt = a["tokens_seen"], base["tokens_seen"]
        if t and bt and abs(t / bt - 1) > TOKENS_TOLERANCE:
            lines.append(f"not at equal tokens: {a['name']} saw {t:,.0f} tokens, the baseline {bt:,.0f} "
                         f"({t / bt - 1:+.0%})" + (f": {c.fairness.tokens_note}" if c.fairness.tokens_note else ""))
    if c.fairness.tokens_note and not any("not at equal tokens" in x for x in lines) and not c.fairness.equal_tokens:
        lines.append(f"tokens: {c.fairness.tokens_note}")


def _null(c: Claim) -> float:
    """The null difference in raw units (treatment - baseline): minus the margin on the claimed side."""
    if c.direction == "higher":
        return -c.test.margin
    if c.direction == "lower":
        return c.test.margin
    return 0.0


def _compare(c: Claim, card: dict, values: dict) -> None:
    tr = c.arm("treatment")
    bl = c.arm("baseline")
    t = c.test
    short = [a for a in card["arms"] if a["role"] in ("treatment", "baseline") and a["n"] < 2]
    if short:
        card["verdict"] = "not testable"
        card["reason"] = ("not run: " + ", ".join(f"{a['name']} has {a['n']} finished run(s) with the metric"
                                                  for a in short) + f"; run `kinlm claims run {c.id}`"
                          + (" --tier gpu" if c.tier == "gpu" else ""))
        return
    try:
        if t.kind == "one_sample":
            cmp = stats.one_sample(values[tr.name], t.value, t.scale, t.alpha)
        elif t.kind == "paired":
            tv, bv = _pair_by_seed(card, tr.name, bl.name, values)
            cmp = stats.paired(tv, bv, _null(c), t.scale, t.alpha)
        else:
            cmp = stats.welch(values[tr.name], values[bl.name], _null(c), t.scale, t.alpha)
    except stats.StatsError as e:
        card["verdict"], card["reason"] = "not testable", str(e)
        return
    card["comparison"] = cmp.as_dict()
    card["difference"], card["ci95"], card["p"] = cmp.difference, list(cmp.ci95), cmp.p
    if bl is not None:
        for a in c.arms:
            if a.role == "ablation":
                try:
                    ab = stats.welch(values[a.name], values[bl.name], 0.0, t.scale, t.alpha)
                    card["ablations"].append({"name": a.name, **ab.as_dict()})
                except stats.StatsError as e:
                    card["ablations"].append({"name": a.name, "error": str(e)})
    card["floor"] = _floor(c, card, values)


def _pair_by_seed(card, tname, bname, values):
    arms = {a["name"]: a for a in card["arms"]}
    tb = dict(zip(arms[bname]["seeds"], values[bname]))
    tv, bv = [], []
    for s, v in zip(arms[tname]["seeds"], values[tname]):
        if s in tb:
            tv.append(v)
            bv.append(tb[s])
    return tv, bv


def _floor(c: Claim, card: dict, values: dict) -> dict | None:
    """Whether each compared arm differs from the metric's floor (None: the metric has none)."""
    alpha = c.test.alpha
    out = {}
    roles = [a for a in card["arms"] if a["role"] in ("treatment", "baseline")]
    if isinstance(c.metric, BlimpMetric):
        for a in roles:
            k = n = 0
            for r in a["runs"]:
                data = _analysis(Path(r), "blimp")
                kn = blimp_counts(data or {}, c.metric.field)
                if kn:
                    k, n = k + kn[0], n + kn[1]
            p = stats.binomial_above_chance(k, n, 0.5) if n else 1.0
            out[a["name"]] = {"chance": 0.5, "correct": k, "pairs": n, "p": p, "differs": n > 0 and p < alpha}
        return {"test": "one-sided binomial test of the arm's pairs, pooled over its seeds (each seed's model scores "
                "the same pairs), against chance 0.5", "arms": out}
    chance = c.metric.chance if isinstance(c.metric, (KeyMetric, AnalyzerMetric, TaskAccuracy)) else None
    if chance is None:
        return None
    for a in roles:
        try:
            cmp = stats.one_sample(values[a["name"]], chance)
            out[a["name"]] = {"chance": chance, "p": cmp.p, "differs": cmp.p < alpha and cmp.difference > 0}
        except stats.StatsError as e:
            out[a["name"]] = {"chance": chance, "p": None, "differs": False, "error": str(e)}
    return {"test": f"one-sample t-test of the arm's values against chance {chance:g}", "arms": out}


def verdict(p_adjusted: float, difference: float, direction: str, margin: float = 0.0, alpha: float = 0.05) -> str:
    """The verdict of a tested claim: ``supported`` when the (Holm-adjusted) p < alpha and the
    difference (treatment - baseline) lies on the claimed side of -margin (lower: of +margin),
    ``contradicted`` when p < alpha on the other side, else ``inconclusive``. ``different`` is
    supported by any significant difference."""
    if not p_adjusted < alpha:
        return "inconclusive"
    if direction == "different":
        return "supported"
    better = difference if direction == "higher" else -difference
    return "supported" if better > -margin else "contradicted"


def decide(cards: list[dict]) -> list[dict]:
    """Holm's correction across the cards' p-values, then each card's verdict (in place)."""
    testable = [c for c in cards if c["verdict"] is None and c["comparison"] is not None]
    floor_out = []
    for c in testable:
        fl = c["floor"]
        if fl is not None and not any(a["differs"] for a in fl["arms"].values()):
            c["verdict"] = "not testable"
            c["reason"] = ("the metric cannot tell the arms from its floor: neither arm differs from chance ("
                           + "; ".join(f"{k}: p = {fmt_p(v['p'])}" for k, v in fl["arms"].items()) + ")")
            floor_out.append(c)
    family = [c for c in testable if c not in floor_out]
    adj = stats.holm([c["p"] for c in family])
    for c, pa in zip(family, adj):
        c["p_adjusted"] = pa
        c["family_size"] = len(family)
        test = c["test"]
        c["verdict"] = verdict(pa, c["difference"], c["direction"], test["margin"], test["alpha"])
        if c["verdict"] == "inconclusive":
            sc = c["comparison"]["scale"]
            c["reason"] = (f"no difference detected; this design detects a difference of "
                           f"{fmt_diff(c['comparison']['detectable'], sc).lstrip('+')} with 80% power "
                           f"(alpha {test['alpha']:g}, unadjusted)")
        elif c["direction"] == "different":
            c["reason"] = "the arms differ"
        elif test["kind"] == "one_sample":
            side = "above" if (c["verdict"] == "supported") == (c["direction"] == "higher") else "below"
            c["reason"] = f"{side} {test['value']:g}"
        elif test["margin"]:
            c["reason"] = (f"within the margin of {fmt_diff(test['margin'], c['comparison']['scale']).lstrip('+')}"
                           if c["verdict"] == "supported" else
                           f"worse by more than the margin of {fmt_diff(test['margin'], c['comparison']['scale']).lstrip('+')}")
        else:
            c["reason"] = "better than the baseline" if c["verdict"] == "supported" else "worse than the baseline"
        if any(f.startswith(("parameters not matched", "not at equal tokens")) for f in c["fairness"]):
            c["reason"] += " (the arms are not matched: see Fairness)"
    return cards


# --- formatting ---------------------------------------------------------------------------------


def _num(x) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax == 0:
        return "0"
    if ax < 1e-3:
        return f"{x:.2e}"
    return f"{x:.4f}"


def fmt_diff(x, scale: str) -> str:
    """A difference in the test's units: a percentage on the log scale (ratio - 1)."""
    if x is None:
        return "-"
    return f"{100 * x:+.1f}%" if scale == "log" else (_num(x) if x < 0 else "+" + _num(x))


def fmt_p(p) -> str:
    if p is None:
        return "-"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _count(n) -> str:
    return "-" if not n else f"{n:,}"


def curves_figure(card: dict, folder) -> str | None:
    """For a claim whose metric is a logged key (``key`` or ``tokens_to_target``): the key against
    tokens seen, one panel per arm: every learning rate of the grid on the first seed (thin), the
    chosen rate's seeds (thick), the target as a dashed line. Writes FOLDER/<id>.png and returns
    its file name (None for other metrics or when no run logged the key)."""
    m = card["metric_spec"]
    if m.get("kind") not in ("key", "tokens_to_target"):
        return None
    key = m["key"]
    arms = [a for a in card["arms"] if a["runs"] or a.get("grid_runs")]
    curves = {a["name"]: ([(k, _curve(_records(Path(r)), key)) for k, r in a.get("grid_runs", {}).items()],
                          [_curve(_records(Path(r)), key) for r in a["runs"]]) for a in arms}
    if not any(c for grid, seeds in curves.values() for c in [*(c for _, c in grid), *seeds]):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .api import FIGURE_DPI

    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.4), sharey=True, squeeze=False)
    for ax, a in zip(axes[0], arms):
        grid, seeds = curves[a["name"]]
        for k, c in grid:
            if c:
                ax.plot(*zip(*c), lw=1, alpha=0.7, label=f"lr {k}" + (" (chosen)" if k == a["lr"].get("chosen") else ""))
        for i, c in enumerate(seeds):
            if c:
                ax.plot(*zip(*c), lw=2, color="black", alpha=0.5, label="chosen lr, seeds" if i == 0 else None)
        if card.get("target") is not None:
            ax.axhline(card["target"], ls="--", color="grey", lw=1, label="target")
        ax.set_title(f"{a['label']} ({a['role']})", fontsize=9)
        ax.set_xlabel("tokens seen")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(key)
    fig.suptitle(card["id"], fontsize=10)
    fig.tight_layout()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{card['id']}.png"
    fig.savefig(folder / name, dpi=FIGURE_DPI)
    plt.close(fig)
    return name


def markdown_card(card: dict, figures_url: str = "") -> str:
    """A claim's card as markdown: source, arms (runs, lr, parameters, tokens, metric), the test,
    fairness notes and the verdict; the curves figure (``card["figure"]``, a file name under
    ``figures_url``) when :func:`curves_figure` drew one."""
    src = card["source"]
    lines = [f"### {card['title']}", "",
             f"`{card['id']}`" + (f" ({card['plugin']})" if card["plugin"] else "") + f", tier {card['tier']}. "
             f"**Verdict: {card['verdict']}**" + (f": {card['reason']}." if card["reason"] else "."), "",
             f"The source: \"{src['statement']}\" ({src['where']})."]
    fig = src.get("figure")
    if fig:
        lines[-1] += f" Its own figure: {fig['value']:g} {fig['unit']} ({fig['text']})."
    lines += ["", f"Metric: {card['metric']}" + (f" (target {_num(card['target'])})" if card.get("target") is not None
                                                   else "") + f"; the claim: the treatment is {card['direction']}"
              + (f" (margin {card['test']['margin']:g})" if card["test"]["margin"] else "")
              + (f" than {card['test']['value']:g}" if card["test"]["kind"] == "one_sample" else " than the baseline")
              + ".", "",
              "| arm | role | spec | runs | learning rate | non-embedding params | total params | tokens seen | metric |",
              "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for a in card["arms"]:
        lr = a["lr"]
        if "grid" in lr:
            lr_txt = (", ".join(f"{k}{'*' if k == lr['chosen'] else ''}: {_num(v)}" if v is not None else f"{k}: -"
                                for k, v in lr["grid"].items()) + f" ({lr['select_on']}, first seed)")
        else:
            lr_txt = (f"no grid: {lr['note']}" if lr.get("note") else
                      f"{lr['fixed']} (the spec's; no grid)" if lr.get("fixed") is not None else "the spec's; no grid")
        spec = a["spec"] + "".join(f" `{s}`" for s in a["set"])
        metric = "-" if a["mean"] is None else _num(a["mean"]) + (f" ± {_num(a['sd'])}" if a["sd"] else "")
        ne = _count(a["params_non_embedding"]) + (f" ({a['params_ratio']:.2f}x)" if a.get("params_ratio") else "")
        lines.append(f"| {a['label']} | {a['role']} | {spec} | {a['n']} | {lr_txt} | {ne} | "
                     f"{_count(a['params_total'])} | {_count(round(a['tokens_seen'])) if a['tokens_seen'] else '-'} | "
                     f"{metric} |")
    grids = [a for a in card["arms"] if a["lr"].get("metric")]
    if grids:
        lines += ["", "The metric at each learning rate of the grid (first seed): " + "; ".join(
            f"{a['name']} " + ", ".join(f"{k}: {_num(v)}" for k, v in a["lr"]["metric"].items()) for a in grids) + "."]
    cmp = card["comparison"]
    lines.append("")
    if cmp:
        what = {"welch": "Welch's t-test", "paired": "paired t-test (by seed)",
                "one_sample": f"one-sample t-test against {card['test'].get('value')}"}[cmp["test"]]
        sc = cmp["scale"]
        unit = " (treatment / baseline - 1)" if sc == "log" and cmp["test"] != "one_sample" else \
            " (mean / value - 1)" if sc == "log" else ""
        lines.append(f"Difference{unit}: {fmt_diff(cmp['difference'], sc)}, 95% CI [{fmt_diff(cmp['ci95'][0], sc)}, "
                     f"{fmt_diff(cmp['ci95'][1], sc)}], p = {fmt_p(cmp['p'])} ({what}, df {cmp['df']:.1f}"
                     + (f", null {fmt_diff(cmp['null'], sc)}" if cmp["null"] else "") + ")"
                     + (f"; Holm-adjusted over the {card['family_size']} claims on this page: p = "
                        f"{fmt_p(card['p_adjusted'])}" if card.get("p_adjusted") is not None and card["family_size"] > 1
                        else "")
                     + f"; detectable with 80% power: {fmt_diff(cmp['detectable'], sc).lstrip('+')}.")
        if fig and fig.get("compare") == "difference":
            lines.append(f"The source's figure: {fig['value']:g} {fig['unit']}; ours: {fmt_diff(cmp['difference'], sc)}.")
        elif fig and fig.get("compare") == "treatment":
            tr = next(a for a in card["arms"] if a["role"] == "treatment")
            lines.append(f"The source's figure: {fig['value']:g} {fig['unit']}; ours: {_num(tr['mean'])}.")
    if card.get("floor"):
        fl = card["floor"]
        lines.append("Floor (" + fl["test"] + "): " + "; ".join(
            f"{k} {'differs' if v['differs'] else 'does not differ'} (p = {fmt_p(v['p'])}"
            + (f", {v['correct']:,} of {v['pairs']:,} pairs" if "pairs" in v else "") + ")"
            for k, v in fl["arms"].items()) + ".")
    for ab in card["ablations"]:
        if "error" in ab:
            lines.append(f"Ablation {ab['name']} against the baseline: {ab['error']}.")
        else:
            sc = ab["scale"]
            lines.append(f"Ablation {ab['name']} against the baseline: {fmt_diff(ab['difference'], sc)}, 95% CI "
                         f"[{fmt_diff(ab['ci95'][0], sc)}, {fmt_diff(ab['ci95'][1], sc)}], p = {fmt_p(ab['p'])} "
                         "(Welch, unadjusted).")
    if card["fairness"]:
        lines += ["", "Fairness: " + "; ".join(card["fairness"]) + "."]
    for n in card["notes"]:
        lines += ["", n]
    if card["problems"]:
        lines += ["", "Missing: " + "; ".join(card["problems"][:5]) + "."]
    if card.get("figure"):
        lines += ["", f"![{card['id']}: {card['metric']} against tokens seen, per arm and learning rate]"
                      f"({figures_url}{card['figure']})"]
    return "\n".join(lines) + "\n"


def json_card(card: dict) -> dict:
    """The card as JSON: id, verdict, difference, ci95 ([lo, hi] or null), p (unadjusted), p_adjusted
    and the rest of the card."""
    return {k: v for k, v in card.items() if k != "metric_spec"}


def report(selected: list[Installed], out, seeds: int | None = None, figures=None) -> list[dict]:
    """The decided cards of the selected claims, in order (Holm across all of them). ``figures``: a
    folder for each card's curves figure (:func:`curves_figure`; its file name in ``card["figure"]``)."""
    cards = decide([evaluate(i, out, seeds) for i in selected])
    if figures is not None:
        for c in cards:
            c["figure"] = curves_figure(c, figures)
    return cards


def listing(items: list[Installed]) -> list[dict]:
    return [{"id": i.claim.id, "title": i.claim.title, "plugin": i.dist, "tier": i.claim.tier,
             "metric": i.claim.metric.label(), "direction": i.claim.direction, "test": i.claim.test.kind,
             "arms": [a.name for a in i.claim.arms], "seeds": i.claim.seeds,
             "lr_grid": i.claim.lr_grid.values if i.claim.lr_grid else None,
             "budget_minutes": i.claim.budget_minutes, "file": str(i.path)} for i in items]

