"""Controls beside the arms (#30 item 3) and the held-out test split (item 4).

**The test split.** A claim whose metric is a key ``test/X`` (``test/loss``, ``test/bpb``,
``test/ppl``, ``test/accuracy``) is decided on the test split: ``kinlm claims report`` evaluates
each run's final weights there once (``kinlm eval RUN --split test``, the whole split, in a
subprocess: the report stays torch-free) and keeps the output as ``RUN/eval_test.json``. Nothing
else in a claim reads the test split: the arms train, pick their learning rate and stop early on
validation (an arm with ``eval.split: "test"`` is refused by :func:`.discovery.check`).

**Controls** (:class:`.schema.Control`), each a row of the card beside the arms and a rule:

- ``untrained``: the treatment's own step-0 weights (``kinlm eval RUN --untrained``, kept as
  ``RUN/eval_<split>_untrained.json``; or the figure the run itself records at step 0), one value
  per treatment run, so paired by seed with the treatment;
- ``ablation``: an arm of the claim with the method's component off;
- ``ngram``: a count n-gram (:mod:`kinlm_core.ngram`) fitted on each neural arm's training split
  with that arm's tokenizer, scored on the test split (``kinlm eval RUN --ngram``, kept as
  ``OUT/arms/<key>/ngram<order>_k<k>_<split>.json``; it has no seeds).

The rules. An untrained or ablation control must be **beaten**: the treatment differs from it
significantly (p < the claim's alpha, unadjusted: the verdict needs both this and the claim's own
test, an intersection-union test, so no correction is due) on the claimed side (a paired t-test
for the untrained control; for an ablation the claim's two-arm test as :func:`.verdicts._design`
resolves it: ``auto``, the default and a one-sample claim's, pairs by seed where both arms ran the
same seeds, else Welch). Where it is
not beaten, the control meets the criterion too, and a "supported" verdict becomes
"inconclusive" (:func:`apply_controls`, after Holm). An ngram control must be beaten on the test
loss by every run of the treatment and of the baseline; where it is not, the neural arms have not
yet learnt what counts know, and the claim is "not testable" at this budget, with the figures
(:func:`evaluate_controls`, before Holm, so the claim leaves the family)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .. import stats
from . import archive
from .metrics import eval_file, metric_value, read_eval
from .render import _num, fmt_p
from .schema import Claim, Control, end_key_split
from .verdicts import _design


_FAILED: dict[tuple, str] = {}  # (run, args) -> why: a failed evaluation is tried once per report


def _kinlm_eval(run: Path, args: list[str]) -> tuple[dict | None, str | None]:
    """``kinlm eval RUN ARGS`` in a subprocess (the report stays torch-free): (its JSON, problem)."""
    key = (str(run), tuple(args))
    if archive.replaying_now():  # rebuilding a page from its archive: nothing is evaluated
        return None, f"kinlm eval {run} {' '.join(args)}: not in the archive"
    if key in _FAILED:
        return None, _FAILED[key]
    r = subprocess.run([sys.executable, "-m", "kinlm_core.cli", "eval", str(run), *args], capture_output=True, text=True)
    if r.returncode:
        _FAILED[key] = (f"kinlm eval {run} {' '.join(args)} exited {r.returncode}: "
                        f"{(r.stderr.strip().splitlines() or [''])[-1]}")
        return None, _FAILED[key]
    try:
        return json.loads(r.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        _FAILED[key] = f"kinlm eval {run} {' '.join(args)}: no JSON on its output"
        return None, _FAILED[key]


def _batches(run: Path, split: str) -> list[str]:
    """Validation as the run evaluated itself (its eval.batches); the test split whole."""
    if split != "validation":
        return []
    spec = archive.read_json(Path(run) / "spec.json")
    b = spec.get("eval", {}).get("batches", 20) if isinstance(spec, dict) else 20
    return ["--batches", str(b)] if b else []


def ensure_eval(run: Path, split: str, untrained: bool = False) -> tuple[dict | None, str | None]:
    """The run's evaluation on ``split`` (its final or, ``untrained``, its step-0 weights): the kept
    one, else ``kinlm eval`` now, kept for the next report. (data, problem)."""
    have = read_eval(run, split, untrained)
    if have is not None:
        return have, None
    data, problem = _kinlm_eval(run, ["--split", split, *_batches(run, split), *(["--untrained"] if untrained else [])])
    if data is not None:
        eval_file(run, split, untrained).write_text(json.dumps(data, indent=2) + "\n")
        archive.remember(eval_file(run, split, untrained), data)
    return data, problem


def ensure_ngram(folder: Path, run: Path, ctl: Control, split: str) -> tuple[dict | None, str | None]:
    """The ngram control of an arm (fitted on ``run``'s training split, scored on ``split``), kept
    in the arm's folder."""
    f = Path(folder) / f"ngram{ctl.order}_k{ctl.k:g}_{split}.json"
    have = archive.read_json(f)
    if have is not None:
        return have, None
    data, problem = _kinlm_eval(run, ["--split", split, *_batches(run, split), "--ngram", str(ctl.order),
                                      "--ngram-k", repr(ctl.k)])
    if data is not None:
        f.write_text(json.dumps(data, indent=2) + "\n")
        archive.remember(f, data)
    return data, problem


def prepare_test_split(c: Claim, arms: dict) -> list[str]:
    """Evaluate on the test split every run of a claim whose metric is a ``test/`` key (the kept
    evaluations are reused). Returns the problems."""
    if end_key_split(c.metric) != "test":
        return []
    problems = []
    for ar in arms.values():
        for r in ar.runs:
            problems += [p for p in [ensure_eval(r, "test")[1]] if p]
    return problems


def _beaten(c: Claim, tv: list, cv: list, paired: bool) -> dict:
    """The treatment's values against a control's: the test, and whether the treatment is
    significantly on the claimed side (``beaten``)."""
    try:
        test = stats.paired if paired else stats.welch
        cmp = test(tv, cv, 0.0, c.test.scale, c.test.alpha)
    except stats.StatsError as e:
        return {"beaten": False, "error": str(e)}
    side = True if c.direction == "different" else (cmp.difference > 0) == (c.direction == "higher")
    return {"beaten": bool(cmp.p < c.test.alpha and side), **cmp.as_dict()}


def _untrained(c: Claim, ctl: Control, tr: dict, values: dict) -> dict:
    runs = [Path(r) for r in tr["runs"]]
    if ctl.metric is not None:
        got = [metric_value(ctl.metric, r) for r in runs]
        vals = [v for v, _ in got]
        what, problems = ctl.metric.label(), [n for v, n in got if v is None and n]
    else:
        split, stat = end_key_split(c.metric), c.metric.key.split("/", 1)[1]
        got = [ensure_eval(r, split, untrained=True) for r in runs]
        vals = [d.get(stat) if d else None for d, _ in got]
        what, problems = f"{c.metric.key}, step-0 weights", [p for _, p in got if p]
    row = {"values": vals, "seeds": tr["seeds"], "what": what, "problems": problems}
    if sum(v is not None for v in vals) >= 2:
        row["gate"] = _beaten(c, values[tr["name"]], vals, paired=True)
    return row


def _ngram(c: Claim, ctl: Control, card: dict, arms: dict) -> dict:
    """Per neural arm (treatment, baseline): the n-gram's test loss against every run's."""
    row: dict = {"per_arm": {}, "problems": [], "values": [], "what": "n-gram fitted on the training split"}
    split = end_key_split(c.metric)
    stat = c.metric.key.split("/", 1)[1] if split else None
    for a in card["arms"]:
        if a["role"] not in ("treatment", "baseline") or not a["runs"]:
            continue
        runs = [Path(r) for r in a["runs"]]
        ng, problem = ensure_ngram(arms[a["name"]].folder, runs[0], ctl, "test")
        got = [ensure_eval(r, "test") for r in runs]
        losses = [d.get("loss") if d else None for d, _ in got]
        row["problems"] += [p for p in [problem, *(p for _, p in got)] if p]
        if ng is None or None in losses:
            row.setdefault("missing", []).append(a["name"])
            continue
        row["per_arm"][a["name"]] = {"ngram_loss": ng["loss"], "losses": losses,
                                     "beaten": all(x < ng["loss"] for x in losses)}
        if a["role"] == "treatment" and split and stat in ("loss", "ppl", "bpb"):
            same = ng if split == "test" else ensure_ngram(arms[a["name"]].folder, runs[0], ctl, split)[0]
            row["values"] = [same.get(stat)] if same else []
    checked = row["per_arm"].values()
    if row.get("missing"):
        row["gate"] = {"beaten": False, "missing": row["missing"]}
    elif checked:
        row["gate"] = {"beaten": all(x["beaten"] for x in checked)}
    else:
        row["gate"] = None  # no runs yet: the card says what to run
    return row


def _two_arm(c: Claim) -> Claim:
    """The claim whose two-arm test an ablation control gets: the claim's own (auto, paired or
    Welch); a one-sample claim's is ``auto`` (paired by seed where both arms ran the same seeds)."""
    if c.test.kind != "one_sample":
        return c
    return c.model_copy(update={"test": c.test.model_copy(update={"kind": "auto"})})


def evaluate_controls(c: Claim, card: dict, arms: dict) -> None:
    """The controls' rows of a card (``card["controls"]``); an ngram control the neural arms do not
    beat makes the claim not testable at this budget (before Holm). Needs the arms' values."""
    values = {a["name"]: a["values"] for a in card["arms"]}
    tr = next(a for a in card["arms"] if a["role"] == "treatment")
    byname = {a["name"]: a for a in card["arms"]}
    rows = []
    for ctl in c.controls:
        row = {"name": ctl.name, "label": ctl.label or ctl.name, "role": ctl.role, "gate": None, "problems": []}
        if ctl.role == "untrained" and tr["runs"]:
            row.update(_untrained(c, ctl, tr, values))
        elif ctl.role == "ablation":
            ab = byname[ctl.arm]
            row.update(values=ab["values"], seeds=ab["seeds"], what=f"arm {ctl.arm}")
            if ab["n"] >= 2 and tr["n"] >= 2:
                kind, why, tv, av = _design(_two_arm(c), card, values, tr["name"], ctl.arm)
                row["gate"] = {**_beaten(c, tv, av, paired=kind == "paired"), "why": why}
        elif ctl.role == "ngram":
            row.update(order=ctl.order, k=ctl.k, **_ngram(c, ctl, card, arms))
        xs = [v for v in row.get("values", []) if v is not None]
        row["mean"] = sum(xs) / len(xs) if xs else None
        rows.append(row)
        card["problems"] += row["problems"][:2]
    card["controls"] = rows
    failed = [r for r in rows if r["role"] == "ngram" and r["gate"] and not r["gate"]["beaten"]]
    if failed and card["verdict"] is None:
        card["verdict"] = "not testable"
        card["reason"] = "; ".join(_ngram_figures(r) for r in failed)


def _ngram_figures(row: dict) -> str:
    if row["gate"].get("missing"):
        return (f"the {row['label']} control could not be compared on the test split for "
                f"{', '.join(row['gate']['missing'])} (see Missing)")
    arms = row["per_arm"]
    ng = next(iter(arms.values()))["ngram_loss"]
    return (f"at this budget: the neural arms do not beat the {row['label']} control on the test split ({_num(ng)} nats per token; "
            + ", ".join(f"{n} {', '.join(_num(x) for x in v['losses'])}" for n, v in arms.items())
            + "; every run of the treatment and the baseline must score lower)")


def apply_controls(cards: list[dict]) -> list[dict]:
    """After the verdicts: a "supported" claim whose untrained or ablation control is not beaten
    becomes "inconclusive": the control meets the criterion too."""
    for card in cards:
        if card["verdict"] != "supported":
            continue
        met = [r for r in card.get("controls", []) if r["role"] in ("untrained", "ablation")
               and not (r["gate"] or {}).get("beaten")]
        unknown = [r for r in met if r["gate"] is None or "error" in r["gate"]]
        met = [r for r in met if r not in unknown]
        why = []
        if met:
            why.append("the control meets the criterion too: " + "; ".join(
                f"{r['label']} ({r['role']}) {_num(r['mean'])}, p = {fmt_p(r['gate'].get('p'))}" for r in met)
                + f" against the treatment's {_num(_treatment_mean(card))}; the treatment must beat it")
        if unknown:
            why.append("the control could not be compared with the treatment: " + "; ".join(
                f"{r['label']} ({r['role']}): " + ((r["gate"] or {}).get("error") or
                                                   f"{sum(v is not None for v in r.get('values', []))} value(s)")
                for r in unknown))
        if why:
            card["verdict"] = "inconclusive"
            card["reason"] = "; ".join(why)
    return cards


def _treatment_mean(card: dict):
    return next(a["mean"] for a in card["arms"] if a["role"] == "treatment")
