"""Claims as data (kinlm_core.claims, `kinlm claims`): the schema and its errors, the claims the
plugins ship (and a third party's, from tests/fixtures), verdict cards computed from fake run
directories (lr grid, fairness, floors, Holm), the runner's grid and resume logic, and a simulation
that false claims are called supported no more often than the nominal rate."""

import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest

from helpers import FIXTURES, kinlm

from kinlm_core import claims as cl
from kinlm_core import stats

FIRST_PARTY = {"accel_penalty.blimp", "accel_penalty.perplexity", "accel_penalty.diffwrapper",
               "accel_penalty.distilgpt2_wikitext103", "vt_t5.vt_gpt_blimp", "vt_t5.vt_t5_blimp",
               "vt_t5.hybrid_curriculum", "hamiltonian.converges_faster", "hamiltonian.reflex_split",
               "context_vector.gap_vs_transformer",
               "cvfp.effective_rank", "cvfp.held_out_effective_rank", "cvfp.diversity_term",
               "cvfp.parallel_vs_sequential"}

SPEC = {"name": "base", "seed": 1, "data": {"type": "embedded", "corpus": "tinyshakespeare", "max_docs": 50},
        "tokenizer": {"type": "byte"}, "model": {"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 32},
        "train": {"max_steps": 4, "batch_size": 2, "block_size": 32, "lr": 3e-3, "warmup_steps": 1}}


def claim_doc(**kw):
    doc = {"claim": 1, "id": "test.better", "title": "The treatment is better",
           "source": {"statement": "it is better", "where": "a test"},
           "arms": [{"name": "base", "role": "baseline", "spec": "spec.json"},
                    {"name": "new", "role": "treatment", "spec": "spec.json", "set": ["model.n_layer=2", "name=new"]}],
           "metric": {"kind": "key", "key": "eval/loss"}, "direction": "lower", "tier": "cpu", "seeds": 3}
    doc.update(kw)
    return doc


def write_claim(tmp_path, file="claim.json", **kw):
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    p = tmp_path / file
    p.write_text(json.dumps(claim_doc(**kw)))
    return p


def fake_run(d, seed, curve, tokens=None, blimp=None, params=1000, analysis=None, extra=None):
    """A finished run: spec.json, result.json, metrics.jsonl with eval/loss, eval/bpb and
    eval/tokens_seen per point of ``curve`` [(tokens, loss)], BLiMP (overall, pairs) if given."""
    d.mkdir(parents=True)
    parts = [x for x in d.parts if x != "tuning"]  # OUT/arms/KEY/[tuning/]NAME/...
    name = parts[parts.index("arms") + 2] if "arms" in parts[:-2] else d.parent.name
    (d / "spec.json").write_text(json.dumps({"name": name, "seed": seed}))
    recs = [{"step": i + 1, "eval/loss": v, "eval/bpb": v / 2, "eval/ppl": math.exp(v), "eval/tokens_seen": t}
            for i, (t, v) in enumerate(curve)]
    if extra:
        recs.append({"step": len(curve), **extra})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "result.json").write_text(json.dumps({"status": "finished", "params": params,
                                               "tokens_seen": tokens or curve[-1][0], "tokens_per_s": 100.0}))
    for name, data in {**({"blimp": blimp} if blimp else {}), **(analysis or {})}.items():
        a = d / "analysis" / name / "step_0000010"
        a.mkdir(parents=True)
        a.joinpath("metrics.json").write_text(json.dumps(data))
    return d


def arm_dir(out, inst, arm_name):
    arm = next(a for a in inst.claim.arms if a.name == arm_name)
    return out / "arms" / cl.arm_key(arm, inst.path) / cl.spec_name(arm, inst.path)


def tuning_dir(out, inst, arm_name):
    """Where an arm's lr grid runs live: OUT/arms/KEY/tuning/NAME (apart from the verdict's runs)."""
    d = arm_dir(out, inst, arm_name)
    return d.parent / "tuning" / d.name


def finals(out, inst, arm, losses, lr=None, tokens=1000, seed0=1, tuning=False, **kw):
    base = (tuning_dir if tuning else arm_dir)(out, inst, arm) / (f"train.lr={lr}" if lr else "")
    for k, v in enumerate(losses):
        fake_run(base / f"seed_{seed0 + k}", seed0 + k, [(tokens / 2, v + 1.0), (tokens, v)], tokens=tokens, **kw)


def installed_file(path):
    return cl.Installed(cl.load_claim(path), path, "")


def card_of(inst, out):
    return cl.report([inst], out)[0]


# --- the schema --------------------------------------------------------------------------------


def test_schema_errors_name_the_file_and_json_path(tmp_path):
    p = write_claim(tmp_path, arms=[{"name": "a", "role": "baseline", "spec": "spec.json", "colour": 1}])
    with pytest.raises(cl.ClaimError) as e:
        cl.load_claim(p)
    text = str(e.value)
    assert f"{p}: arms[0].colour: Extra inputs are not permitted" in text
    p = write_claim(tmp_path, metric={"kind": "perplexity"})
    with pytest.raises(cl.ClaimError, match=r"claim.json: metric: Input tag 'perplexity' found using 'kind' does not"):
        cl.load_claim(p)
    p = write_claim(tmp_path, arms=[{"name": "a", "role": "baseline", "spec": "spec.json"}])
    with pytest.raises(cl.ClaimError, match="exactly one arm needs role 'treatment'"):
        cl.load_claim(p)
    p = write_claim(tmp_path, test={"kind": "one_sample"})
    with pytest.raises(cl.ClaimError, match="test.value is needed by a one_sample test"):
        cl.load_claim(p)
    p = write_claim(tmp_path, direction="different", test={"margin": 0.1})
    with pytest.raises(cl.ClaimError, match="test.margin is for a two-arm test"):
        cl.load_claim(p)
    (tmp_path / "notaclaim.json").write_text(json.dumps({"id": "x"}))
    with pytest.raises(cl.ClaimError, match="not a claim"):
        cl.load_claim(tmp_path / "notaclaim.json")


def test_validate_checks_claim_files_and_their_arms(tmp_path):
    good = write_claim(tmp_path)
    r = cli("validate", str(good), str(tmp_path / "spec.json"))
    assert r.exit_code == 0, r.output
    assert f"ok: {good} (claim test.better)" in r.stdout and f"ok: {tmp_path / 'spec.json'}" in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(claim_doc(arms=[{"name": "base", "role": "baseline", "spec": "spec.json"},
                                              {"name": "new", "role": "treatment", "spec": "spec.json",
                                               "set": ["model.n_layr=2"]}])))
    r = cli("validate", str(bad))
    assert r.exit_code == 2 and f"{bad}: arms[1] (new):" in r.stderr and "n_layr" in r.stderr
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(claim_doc(arms=[{"name": "b", "role": "baseline", "spec": "nope.json"},
                                                  {"name": "t", "role": "treatment", "spec": "spec.json"}])))
    r = kinlm("validate", str(missing), str(good))  # the real command: exit 2, one line, no traceback
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"{missing}: arms[0] (b): spec nope.json: no such file"
    assert f"ok: {good} (claim test.better)" in r.stdout


def test_an_arm_that_evaluates_on_the_test_split_is_refused(tmp_path):
    """An arm whose spec or override sets eval.split "test" would pick its learning rate and stop
    early on the test split: `kinlm validate` and `kinlm claims run` refuse it in one line naming
    where it came from, exit 2, before anything trains."""
    why = ("is refused: a claim's arm evaluates on the validation split during training (its learning rate is "
           "picked and it may stop early there), so the test split stays unseen")
    p = write_claim(tmp_path, arms=[{"name": "base", "role": "baseline", "spec": "spec.json"},
                                    {"name": "new", "role": "treatment", "spec": "spec.json",
                                     "set": ["model.n_layer=2", "eval.split=test"]}])
    r = cli("validate", str(p))
    assert r.exit_code == 2
    assert r.stderr.strip() == f'{p}: arms[1] (new): eval.split "test" (from its set eval.split=test) {why}'
    (tmp_path / "on_test.json").write_text(json.dumps({**SPEC, "eval": {"split": "test"}}))
    q = write_claim(tmp_path, "q.json", arms=[{"name": "base", "role": "baseline", "spec": "on_test.json"},
                                              {"name": "new", "role": "treatment", "spec": "spec.json"}],
                    lr_grid={"values": [0.001, 0.003]})
    out = tmp_path / "out"
    r = kinlm("claims", "run", str(q), "--out", str(out))  # the real command: one line, no traceback
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f'{q}: arms[0] (base): eval.split "test" (from its spec on_test.json) {why}'
    assert not out.exists()  # nothing trained
    # the split the arm is evaluated on when nothing says otherwise: validation, accepted
    assert cli("validate", str(write_claim(tmp_path, "ok.json"))).exit_code == 0


def test_the_plugins_claims_are_installed_and_valid():
    items, problems = cl.installed()
    assert problems == []
    ids = {i.claim.id for i in items}
    assert FIRST_PARTY <= ids
    for i in items:
        if i.claim.id in FIRST_PARTY:
            assert i.path.parent.name == "claims" and i.dist.startswith("kinlm-")
            assert cl.check(i) == [], i.claim.id
            assert i.claim.id.split(".")[0] in i.dist.replace("-", "_")
    cpu = [i for i in items if i.claim.tier == "cpu" and i.claim.id in FIRST_PARTY]
    # the CPU page regenerates in at most 4 hours on 2 cores (#30 item 7; estimates in specs/claims/README.md)
    assert sum(i.claim.budget_minutes for i in cpu) <= 240
    assert all(i.claim.budget_minutes is not None for i in cpu)


def third_party_site(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(FIXTURES / "kinlm_fixture_claims", site / "kinlm_fixture_claims")
    info = site / "kinlm_fixture_claims-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kinlm-fixture-claims\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[kinlm]\nkinlm_fixture_claims = kinlm_fixture_claims\n")
    return site


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """The fixture plugin installed (on sys.path, found by its entry point) for in-process CLI calls."""
    from kinlm_core import plugins

    site = third_party_site(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_manager", plugins.Manager())
    return site


def cli(*args):
    from click.testing import CliRunner

    from kinlm_core.cli import main

    return CliRunner().invoke(main, list(args))


def test_a_third_party_claim_is_listed_and_gets_a_card(tmp_path, third_party):
    r = cli("claims", "--json")
    assert r.exit_code == 0, r.output
    rows = {x["id"]: x for x in json.loads(r.stdout)}
    assert rows["fixture_claims.deeper"]["plugin"] == "kinlm-fixture-claims"
    assert FIRST_PARTY <= set(rows)
    r = cli("claims")
    assert "fixture_claims.deeper  [cpu] A second layer lowers the validation loss" in r.stdout
    # its runs, where `kinlm claims run` would put them
    path = third_party / "kinlm_fixture_claims" / "claims" / "deeper.json"
    inst = installed_file(path)
    out = tmp_path / "out"
    finals(out, inst, "one_layer", [5.0, 5.1])
    finals(out, inst, "two_layers", [4.0, 4.1])
    r = cli("claims", "report", "fixture_claims.deeper", "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    (card,) = json.loads(r.stdout)
    assert card["id"] == "fixture_claims.deeper" and card["verdict"] == "supported"
    assert card["difference"] == pytest.approx(-1.0) and len(card["ci95"]) == 2 and 0 < card["p"] < 0.05
    r = cli("claims", "report", "fixture_claims.deeper", "--out", str(out), "-o", str(tmp_path / "c.md"))
    md = (tmp_path / "c.md").read_text()
    assert "**Verdict: supported**" in md and "| two_layers | treatment | tiny.json `model.n_layer=2`" in md
    assert "The source's figure: -0.1 nats; ours: -1.0000." in md
    assert "no grid: the spec's rate, to keep the fixture small" in md
    r = cli("claims", "report", "fixture_claims.deepr")
    assert r.exit_code == 2 and "did you mean fixture_claims.deeper?" in r.stderr


def test_kinlm_claims_calls_the_hook_of_every_plugin(third_party):
    from kinlm_core import plugins

    items, problems = cl.installed(plugins.get_manager())
    assert problems == [] and {i.dist for i in items} >= {"kinlm-fixture-claims", "kinlm-cvfp", "kinlm-vt-t5"}


# --- cards from fake runs ----------------------------------------------------------------------


def test_lr_grid_choice_and_a_supported_claim(tmp_path):
    p = write_claim(tmp_path, lr_grid={"values": [0.001, 0.002, 0.004]})
    inst = installed_file(p)
    out = tmp_path / "out"
    # first seed at each rate: base is best at 0.002, new at 0.004
    for arm, best, value in (("base", "0.002", 3.0), ("new", "0.004", 2.5)):
        for lr in ("0.001", "0.002", "0.004"):
            finals(out, inst, arm, [value if lr == best else 3.5], lr=lr, tuning=True)
    finals(out, inst, "base", [3.0, 3.1, 3.05], lr="0.002")
    finals(out, inst, "new", [2.5, 2.52, 2.55], lr="0.004")
    finals(out, inst, "new", [0.1, 0.1], lr="0.001", seed0=2)  # seeds at a rate not chosen: never used
    card = card_of(inst, out)
    base, new = card["arms"]
    assert base["lr"]["chosen"] == "0.002" and new["lr"]["chosen"] == "0.004"
    assert base["lr"]["grid"] == {"0.001": 3.5, "0.002": 3.0, "0.004": 3.5}
    assert new["lr"]["grid"] == {"0.001": 3.5, "0.002": 3.5, "0.004": 2.5}
    # new's best is the grid's top: its extension to 0.008 has not run, so the card says so
    assert new["lr"]["pending"] == "0.008" and base["lr"]["pending"] is None
    assert ("new's best rate 0.004 is at the top of the grid, and its extension to 0.008 has not run "
            "(`kinlm claims run` trains it)") in card["fairness"]
    assert new["values"] == [2.5, 2.52, 2.55] and new["seeds"] == [1, 2, 3]
    assert card["verdict"] == "supported"
    # both arms ran seeds 1-3: the default test pairs them by seed
    ref = stats.paired([2.5, 2.52, 2.55], [3.0, 3.1, 3.05])
    assert card["design"]["test"] == "paired" and "both arms ran seeds 1, 2, 3" in card["design"]["why"]
    assert card["difference"] == pytest.approx(ref.difference) and card["p"] == pytest.approx(ref.p)
    md = cl.markdown_card(card)
    assert "0.001: 3.5000, 0.002*: 3.0000, 0.004: 3.5000 (eval/loss, first seed)" in md


def test_identical_arms_are_inconclusive_with_the_ci_and_the_detectable_difference_at_the_adjusted_level(tmp_path):
    a = installed_file(write_claim(tmp_path))
    b = installed_file(write_claim(tmp_path, "b.json", id="test.other", metric={"kind": "key", "key": "eval/bpb"}))
    out = tmp_path / "out"
    finals(out, a, "base", [3.0, 3.2, 3.1])
    finals(out, a, "new", [3.1, 3.0, 3.2])  # the same values, shuffled across seeds
    card = cl.report([a, b], out)[0]  # two claims in the family "test": Holm's levels 0.025 and 0.05
    assert card["verdict"] == "inconclusive" and card["difference"] == pytest.approx(0.0, abs=1e-12)
    ref = stats.paired([3.1, 3.0, 3.2], [3.0, 3.2, 3.1])
    assert card["family"] == "test" and card["family_size"] == 2 and card["alpha_adjusted"] == pytest.approx(0.025)
    d = stats.detectable(ref.se, 2.0, 0.025)
    assert d > stats.detectable(ref.se, 2.0, 0.05)  # at the adjusted level the design sees less
    assert card["detectable_adjusted"] == pytest.approx(d)
    lo, hi = ref.ci95
    assert (f"undecided at the adjusted level 0.025 (Holm within test, 2 claims): 95% CI [{cl.fmt_diff(lo, 'absolute')}, "
            f"{cl.fmt_diff(hi, 'absolute')}]; this design (paired t-test by seed) detects a true difference of "
            f"{d:.4f} with 80% power") == card["reason"]
    assert "no difference detected" not in cl.markdown_card(card).lower()


def test_missing_runs_are_not_testable_and_say_what_to_run(tmp_path):
    inst = installed_file(write_claim(tmp_path))
    out = tmp_path / "out"
    finals(out, inst, "base", [3.0, 3.2])
    card = card_of(inst, out)
    assert card["verdict"] == "not testable" and card["ci95"] is None
    assert "new has 0 finished run(s)" in card["reason"] and "kinlm claims run test.better" in card["reason"]


def blimp(acc, pairs=6700):
    return {"overall": acc, "pairs": pairs}


def test_blimp_at_chance_is_not_testable_above_chance_is_tested(tmp_path):
    """The floor tests each arm's per-seed accuracies (one number per seed), never the pairs pooled
    across seeds: 0.515, 0.530, 0.500 on 6,700 pairs each is far above chance pooled (20,100 pairs,
    binomial p < 1e-4) but not at seed level (t-test, p = 0.23)."""
    inst = installed_file(write_claim(tmp_path, metric={"kind": "blimp"}, direction="higher"))
    out = tmp_path / "out"
    base_runs = arm_dir(out, inst, "base")

    def arms(base, new):
        shutil.rmtree(out, ignore_errors=True)
        for k, a in enumerate(base):
            fake_run(base_runs / f"seed_{k + 1}", k + 1, [(1, 1.0)], blimp=blimp(a))
        for k, a in enumerate(new):
            fake_run(arm_dir(out, inst, "new") / f"seed_{k + 1}", k + 1, [(1, 1.0)], blimp=blimp(a))
        return card_of(inst, out)

    card = arms((0.500, 0.502, 0.498), (0.501, 0.499, 0.503))
    assert card["verdict"] == "not testable"
    assert "cannot tell the arms from its floor" in card["reason"]
    assert card["floor"]["arms"]["base"]["p"] == pytest.approx(1.0) and card["floor"]["arms"]["base"]["n"] == 3
    assert "per-seed values" in card["floor"]["test"]
    card = arms((0.515, 0.530, 0.500), (0.516, 0.529, 0.501))
    assert stats.binomial_above_chance(round(0.515 * 6700) + round(0.53 * 6700) + 3350, 3 * 6700) < 1e-4
    ref = stats.one_sample([0.515, 0.530, 0.500], 0.5)
    assert card["floor"]["arms"]["base"]["p"] == pytest.approx(ref.p) and ref.p > 0.2
    assert card["verdict"] == "not testable"
    card = arms((0.520, 0.522, 0.518), (0.521, 0.519, 0.523))
    assert card["floor"]["arms"]["base"]["differs"] and card["verdict"] == "inconclusive"


def test_blimp_field_counts_come_from_its_paradigms():
    from kinlm_core.blimp import PARADIGMS

    names = sorted(PARADIGMS)
    data = {"overall": 0.6, "pairs": 100 * len(names), **{p: 0.5 for p in names}}
    syntax = [p for p in names if PARADIGMS[p] == "syntax"]
    data[syntax[0]] = 1.0
    k, n = cl.blimp_counts(data, "syntax")
    assert n == 100 * len(syntax) and k == 50 * (len(syntax) - 1) + 100
    assert cl.blimp_counts(data, "overall") == (60 * len(names), 100 * len(names))


def test_runs_from_an_earlier_spec_are_left_out_and_named(tmp_path):
    """A run whose spec.json differs from the arm's spec today (here: its lr) is not counted; the
    card says which and why. Keys a run's spec.json lacks (fields added since) do not count."""
    inst = installed_file(write_claim(tmp_path))
    out = tmp_path / "out"
    finals(out, inst, "base", [2.0, 2.1, 2.2])
    finals(out, inst, "new", [1.0, 1.1, 1.2])
    run = arm_dir(out, inst, "new") / "seed_2"
    spec = json.loads((run / "spec.json").read_text())
    (run / "spec.json").write_text(json.dumps({**spec, "train": {"lr": 0.5}}))
    card = card_of(inst, out)
    new = next(a for a in card["arms"] if a["name"] == "new")
    assert new["n"] == 2 and new["values"] == [1.0, 1.2]
    assert any("arm new: 1 run(s) left out, made from an earlier version of its spec" in p and "(train.lr)" in p
               for p in card["problems"])


def test_tokens_to_target_interpolates_and_counts_runs_that_never_reach_it(tmp_path):
    inst = installed_file(write_claim(tmp_path, metric={"kind": "tokens_to_target", "key": "eval/loss"}))
    out = tmp_path / "out"
    for k in range(3):  # the baseline ends at 2.0: the target
        fake_run(arm_dir(out, inst, "base") / f"seed_{k + 1}", k + 1, [(100, 4.0), (200, 3.0), (400, 2.0)])
    curves = [[(100, 3.0), (200, 1.0), (400, 0.5)],  # reaches 2.0 at 150 tokens
              [(100, 2.5), (200, 1.5), (400, 1.0)],  # at 150
              [(100, 4.0), (200, 3.0), (400, 2.5)]]  # never: counted at 400
    for k, c in enumerate(curves):
        fake_run(arm_dir(out, inst, "new") / f"seed_{k + 1}", k + 1, c)
    card = card_of(inst, out)
    assert card["target"] == pytest.approx(2.0)
    new = card["arms"][1]
    assert new["tokens_values"] == pytest.approx([150.0, 150.0, 400.0]) and new["censored"] == 1
    assert any("1 of 3 runs never reached the target" in n for n in card["notes"])
    # a censored treatment run is a lower bound that favours the claim: the verdict compares the final values
    assert card["basis"] == "final" and new["values"] == [0.5, 1.0, 2.5] and card["arms"][0]["values"] == [2.0] * 3
    assert card["difference"] == pytest.approx(4 / 3 - 2.0) and card["metric"].startswith("final eval/loss")
    assert any("Tokens to the target, per arm: base 400, 400, 400; new 150, 150, 400." in n for n in card["notes"])
    # a treatment that never reaches the target and ends worse: contradicted on the final values
    out2 = tmp_path / "out2"
    for k in range(3):
        fake_run(arm_dir(out2, inst, "base") / f"seed_{k + 1}", k + 1, [(100, 4.0), (200, 3.0), (400, 2.0 + k / 100)])
        fake_run(arm_dir(out2, inst, "new") / f"seed_{k + 1}", k + 1, [(100, 4.0), (200, 3.0), (400, 2.5 + k / 100)])
    card = card_of(inst, out2)
    assert card["arms"][1]["censored"] == 3 and card["verdict"] == "contradicted"
    assert card["difference"] == pytest.approx(0.5)


def test_fairness_notes_parameters_and_tokens(tmp_path):
    inst = installed_file(write_claim(tmp_path, fairness={"tokens_note": "its curriculum ends itself"}))
    out = tmp_path / "out"
    finals(out, inst, "base", [3.0, 3.1, 3.2], tokens=1000)
    finals(out, inst, "new", [2.0, 2.1, 2.2], tokens=1440)
    (arm_dir(out, inst, "base").parent / "params.json").write_text(json.dumps({"total": 1000, "non_embedding": 800}))
    (arm_dir(out, inst, "new").parent / "params.json").write_text(json.dumps({"total": 1100, "non_embedding": 296}))
    card = card_of(inst, out)
    text = "; ".join(card["fairness"])
    assert "parameters not matched: new has 0.37x the baseline's non-embedding parameters (296 vs 800" in text
    assert "not at equal tokens: new saw 1,440 tokens, the baseline 1,000 (+44%): its curriculum ends itself" in text
    assert card["verdict"] == "supported" and "(the arms are not matched: see Fairness)" in card["reason"]
    md = cl.markdown_card(card)
    assert "| 296 (0.37x) | 1,100 | 1,440 |" in md


def test_holm_across_the_claims_on_one_page(tmp_path):
    a = installed_file(write_claim(tmp_path))
    out = tmp_path / "out"
    finals(out, a, "base", [3.0, 3.1, 3.2])
    finals(out, a, "new", [2.8, 2.95, 3.0])
    b = installed_file(write_claim(tmp_path, "b.json", id="test.other", metric={"kind": "key", "key": "eval/bpb"}))
    cards = cl.report([a, b], out)  # the same runs, bpb = loss / 2: the same p
    pa, pb = cards[0]["p"], cards[1]["p"]
    assert pa == pytest.approx(pb)
    assert cards[0]["p_adjusted"] == pytest.approx(min(1.0, 2 * pa)) and cards[0]["family_size"] == 2
    alone = cl.report([a], out)[0]
    assert alone["p_adjusted"] == pytest.approx(pa)


def test_one_sample_against_a_fixed_value(tmp_path):
    p = write_claim(tmp_path, arms=[{"name": "new", "role": "treatment", "spec": "spec.json"}],
                    metric={"kind": "key", "key": "fixed_point/effective_rank_pct"}, direction="higher",
                    test={"kind": "one_sample", "value": 30.0})
    inst = installed_file(p)
    out = tmp_path / "out"
    for k, er in enumerate((55.0, 57.0, 59.0)):
        fake_run(arm_dir(out, inst, "new") / f"seed_{k + 1}", k + 1, [(1, 1.0)],
                 extra={"fixed_point/effective_rank_pct": er})
    card = card_of(inst, out)
    assert card["verdict"] == "supported" and card["reason"] == "above 30"
    assert card["difference"] == pytest.approx(27.0)


def test_a_margin_on_the_log_scale_compares_with_the_sources_gap(tmp_path):
    inst = installed_file(write_claim(tmp_path, test={"kind": "welch", "scale": "log", "margin": 0.165}))
    out = tmp_path / "out"
    finals(out, inst, "base", [5.0, 5.01, 4.99])
    finals(out, inst, "new", [5.5, 5.52, 5.48])  # +10%: within the source's +16.5%
    card = card_of(inst, out)
    assert card["difference"] == pytest.approx(0.1, abs=0.002) and card["verdict"] == "supported"
    assert "within the margin of 16.5%" in card["reason"]
    shutil.rmtree(out)
    finals(out, inst, "base", [5.0, 5.01, 4.99])
    finals(out, inst, "new", [6.5, 6.52, 6.48])  # +30%
    assert card_of(inst, out)["verdict"] == "contradicted"


def test_false_claims_are_supported_at_most_at_the_nominal_rate():
    # true difference 0, or against the claim: a lower-is-better claim is called supported at most alpha
    rng = random.Random(1)
    for shift in (0.0, 0.5):
        supported = 0
        trials = 1500
        for _ in range(trials):
            base = [rng.gauss(0.0, 1.0) for _ in range(3)]
            new = [rng.gauss(shift, rng.choice((0.5, 2.0))) for _ in range(3)]  # unequal variances
            c = stats.welch(new, base, power=None)
            supported += cl.verdict(c.p, c.difference, "lower") == "supported"
        rate = supported / trials
        assert rate <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / trials), (shift, rate)
    # and a true effect is found: the test is not simply mute
    hits = sum(cl.verdict(stats.welch([rng.gauss(-3, 0.5) for _ in range(3)], [rng.gauss(0, 0.5) for _ in range(3)],
                                      power=None).p, -3, "lower") == "supported" for _ in range(200))
    assert hits > 150


# --- the runner ---------------------------------------------------------------------------------


def test_run_picks_the_rate_then_runs_every_seed_and_resumes(tmp_path, monkeypatch):
    from kinlm_core import sweep as sw

    p = write_claim(tmp_path, lr_grid={"values": [0.001, 0.003]}, seeds=2)
    inst = installed_file(p)
    launched = []

    def fake_sweep(spec, seeds, grid, sets, out, parallel, echo, manager):
        out_dir, points = sw.plan([str(spec)], seeds, grid, sets, out, manager)
        for pt in points:
            if Path(pt.run_dir, "result.json").exists():
                continue
            launched.append(pt.label())
            lr = float(pt.grid[0].split("=")[1])
            loss = 3.0 + abs(lr - (0.003 if pt.name == "new" else 0.001)) * 100  # best: base 0.001, new 0.003
            fake_run(Path(pt.run_dir), pt.seed, [(10, loss + 1), (20, loss)])
        return 0

    monkeypatch.setattr(cl.arms, "_sweep", fake_sweep)
    monkeypatch.setattr(cl.arms, "_count_params", lambda run, dest, echo: dest.write_text('{"total": 5, "non_embedding": 4}'))
    out = tmp_path / "out"
    msgs = []
    assert cl.run([inst], out, echo=msgs.append) == 0
    # the grid on seed 1 (under tuning/); each arm's best is at an edge, so the grid grows one value
    # beyond it (0.001 / 3, 0.003 * 3), which does worse; then the verdict seeds 1, 2 at the choice
    assert sorted(launched) == sorted(["base train.lr=0.001 seed_1", "base train.lr=0.003 seed_1",
                                       "base train.lr=0.000333 seed_1",
                                       "base train.lr=0.001 seed_1", "base train.lr=0.001 seed_2",
                                       "new train.lr=0.001 seed_1", "new train.lr=0.003 seed_1",
                                       "new train.lr=0.009 seed_1",
                                       "new train.lr=0.003 seed_1", "new train.lr=0.003 seed_2"])
    assert any("-> 0.003 (extended beyond the edge: 0.009)" in m for m in msgs)
    assert any("-> 0.001 (extended beyond the edge: 0.000333)" in m for m in msgs)
    launched.clear()
    assert cl.run([inst], out, echo=msgs.append) == 0
    assert launched == []  # everything was there: nothing runs again
    card = card_of(inst, out)
    assert [a["lr"]["chosen"] for a in card["arms"]] == ["0.001", "0.003"]
    assert card["arms"][0]["lr"]["grid"] == {"0.000333": pytest.approx(3.0667), "0.001": 3.0, "0.003": 3.2}
    assert "base's grid was extended beyond its edge to 0.000333 (its best rate was at the edge)" in card["fairness"]
    assert not any("a rate beyond it" in f for f in card["fairness"])
    assert card["arms"][0]["params_non_embedding"] == 4
    gpu = write_claim(tmp_path, "big.json", tier="gpu", id="test.big")
    msgs.clear()
    assert cl.run([installed_file(gpu)], out, echo=msgs.append) == 0
    assert msgs == ["test.big: tier gpu, skipped (run it with --tier gpu)"]


def test_run_tunes_on_the_tuning_seeds_decides_on_the_verdict_seeds_and_extends_the_grid_twice(tmp_path, monkeypatch):
    launched = []
    # lower loss the higher the rate (new) or the lower (base): every choice is at the edge
    monkeypatch.setattr(cl.arms, "_sweep", fake_sweeper(launched, value=lambda pt: 3.0 - (
        float(pt.grid[0].split("=")[1]) if pt.name == "new" else -float(pt.grid[0].split("=")[1])) + pt.seed / 1000))
    monkeypatch.setattr(cl.arms, "_count_params", lambda run, dest, echo: dest.write_text('{"total": 5}'))
    reg = {**REG, "tuning_seeds": [7, 8], "verdict_seeds": [1, 2, 5]}
    inst = installed_file(write_claim(tmp_path, registration=reg, lr_grid={"values": [0.1, 0.2]}))
    out = tmp_path / "out"
    msgs = []
    assert cl.run([inst], out, echo=msgs.append) == 0
    new = [x for x in launched if x.startswith("new")]
    # the grid and two extensions (0.4, 0.8) on tuning seeds 7 and 8; then verdict seeds 1, 2 and 5 at 0.8
    assert new == ["new train.lr=0.1 seed_7", "new train.lr=0.1 seed_8", "new train.lr=0.2 seed_7",
                   "new train.lr=0.2 seed_8", "new train.lr=0.4 seed_7", "new train.lr=0.4 seed_8",
                   "new train.lr=0.8 seed_7", "new train.lr=0.8 seed_8", "new train.lr=0.8 seed_1",
                   "new train.lr=0.8 seed_2", "new train.lr=0.8 seed_5"]
    assert {x.rsplit(" ", 1)[1] for x in launched if x.startswith("base")} == {"seed_7", "seed_8", "seed_1", "seed_2",
                                                                                "seed_5"}
    assert sorted(p.name for p in (tuning_dir(out, inst, "new") / "train.lr=0.8").iterdir()) == ["seed_7", "seed_8"]
    assert sorted(p.name for p in (arm_dir(out, inst, "new") / "train.lr=0.8").iterdir()) == ["seed_1", "seed_2",
                                                                                             "seed_5"]
    assert any("lr grid on tuning seeds 7, 8 (eval/loss): " in m and "-> 0.8 (extended beyond the edge: 0.4, 0.8)" in m
               for m in msgs)
    card = card_of(inst, out)
    base, tr = card["arms"]
    assert tr["seeds"] == [1, 2, 5] and base["lr"]["chosen"] == "0.025" and tr["lr"]["extended"] == ["0.4", "0.8"]
    assert tr["lr"]["grid"]["0.8"] == pytest.approx(3.0 - 0.8 + 0.0075)  # the mean over tuning seeds 7 and 8
    assert "new's best rate 0.8 is still at the top of the grid after 2 extensions: a rate beyond it might do better" \
        in card["fairness"]
    assert card["registration"]["state"] == "pre-registered" and card["registration"]["seed_notes"] == []
    assert "(eval/loss, tuning seeds 7, 8)" in cl.markdown_card(card)
    launched.clear()
    assert cl.run([inst], out, echo=msgs.append) == 0 and launched == []  # resumes: nothing again


@pytest.mark.slow
def test_claims_run_and_report_end_to_end(tmp_path):
    """Two arms x 2 seeds of a 2-step model through kinlm sweep, then a card."""
    site = third_party_site(tmp_path)
    env = {"PYTHONPATH": str(site), "KINLM_CACHE": os.environ.get("KINLM_CACHE", str(tmp_path / "cache"))}
    out = tmp_path / "out"
    r = kinlm("claims", "run", "fixture_claims.deeper", "--out", str(out), env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = kinlm("claims", "report", "fixture_claims.deeper", "--out", str(out), "--json", env=env)
    (card,) = json.loads(r.stdout)
    assert [a["n"] for a in card["arms"]] == [2, 2]
    assert card["verdict"] in cl.VERDICTS and card["p"] is not None
    assert card["arms"][1]["params_non_embedding"] > card["arms"][0]["params_non_embedding"] > 0
    r = kinlm("claims", "run", "fixture_claims.deeper", "--out", str(out), env=env)
    assert r.returncode == 0 and r.stdout.count("skip (finished)") == 4


def test_metric_values_of_one_run(tmp_path):
    run = fake_run(tmp_path / "r" / "seed_1", 1, [(100, 4.0), (300, 2.0)],
                   analysis={"token_geometry": {"pairwise_cosine_per_layer": [0.1, 0.4], "layers": 2}},
                   extra={"perf/peak_mem_mb": 512.0})
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "perf/peak_mem_mb": 640.0}) + "\n")
    v, _ = cl.metric_value(cl.KeyMetric(key="eval/loss", at_tokens=250), run)
    assert v == pytest.approx(2.5)  # 4.0 at 100, 2.0 at 300: linear in tokens seen
    v, note = cl.metric_value(cl.KeyMetric(key="eval/loss", at_tokens=1000), run)
    assert v is None and "not logged around 1,000 tokens" in note
    assert cl.metric_value(cl.KeyMetric(key="eval/loss"), run)[0] == 2.0
    assert cl.metric_value(cl.ResourceMetric(what="peak_memory_mb"), run)[0] == 640.0
    assert cl.metric_value(cl.ResourceMetric(what="tokens_per_s"), run)[0] == 100.0
    am = cl.AnalyzerMetric(analyzer="token_geometry", key="pairwise_cosine_per_layer.1")
    assert cl.metric_value(am, run)[0] == pytest.approx(0.4)
    v, note = cl.metric_value(cl.AnalyzerMetric(analyzer="effective_rank", key="x"), run)
    assert v is None and note.endswith("no analysis/effective_rank")
    assert cl.metric_value(cl.TaskAccuracy(), run) == (None, f"{run}: no eval/accuracy in result.json or metrics.jsonl")


def test_the_card_shows_the_metric_at_each_rate_of_the_grid(tmp_path):
    p = write_claim(tmp_path, lr_grid={"values": [0.001, 0.002]}, seeds=2,
                    metric={"kind": "tokens_to_target", "key": "eval/loss", "target": 2.0})
    inst = installed_file(p)
    out = tmp_path / "out"
    for arm, reach in (("base", {"0.001": 300, "0.002": 200}), ("new", {"0.001": 150, "0.002": 100})):
        for lr, t in reach.items():
            for folder in (arm_dir, tuning_dir):
                for seed in (1, 2):
                    fake_run(folder(out, inst, arm) / f"train.lr={lr}" / f"seed_{seed}", seed,
                             [(t / 2, 3.0), (t, 2.0), (400, 1.9 if lr == "0.002" else 1.95)])
    card = card_of(inst, out)
    assert [a["lr"]["chosen"] for a in card["arms"]] == ["0.002", "0.002"]
    assert card["arms"][1]["lr"]["metric"] == {"0.001": 150.0, "0.002": 100.0}
    assert ("new's best rate 0.002 is at the top of the grid, and its extension to 0.004 has not run "
            "(`kinlm claims run` trains it)") in card["fairness"]
    assert ("The metric at each learning rate of the grid (first tuning seed): base 0.001: 300.0, 0.002: 200.0; "
            "new 0.001: 150.0, 0.002: 100.0.") in cl.markdown_card(card)
    # the curves figure: every rate of the grid and the chosen rate's seeds, per arm; linked from the card
    card = cl.report([inst], out, figures=tmp_path / "fig")[0]
    assert card["figure"] == "test.better.png" and (tmp_path / "fig" / "test.better.png").stat().st_size > 5000
    assert "![test.better: " in cl.markdown_card(card, "results/") and "](results/test.better.png)" in \
        cl.markdown_card(card, "results/")
    assert ("The curves have 3 evaluation points a run, fewer than the 8 a readable curve needs (the arms' specs "
            "evaluate too rarely: eval.every).") in cl.markdown_card(card)
    r = cli("claims", "report", str(p), "--out", str(out), "--figures", str(tmp_path / "f2"), "-o",
            str(tmp_path / "page.md"))
    assert r.exit_code == 0, r.output
    assert "](f2/test.better.png)" in (tmp_path / "page.md").read_text() and (tmp_path / "f2" / "test.better.png").exists()


def test_the_guides_example_claim_is_valid():
    from helpers import ROOT

    doc = (ROOT / "docs" / "writing-a-plugin.md").read_text().split("## 10. Claims")[1]
    (block,) = [b for b in doc.split("```json\n")[1:2]]
    claim = cl.Claim.model_validate(json.loads(block.split("```")[0]))
    assert claim.id == "mymethod.better" and claim.lr_grid.values == [0.001, 0.002, 0.004]


# specs/claims/X.json is specs/benchmark/Y.json at the claims' budget (#30 item 7: 600 steps, 1,228,800 tokens, where
# every neural LM arm is meant to beat the bigram; evaluated every 75 steps: 8 points a curve), except for these
# documented differences
CLAIM_SPECS = {"gpt.json": "gpt.json", "gpt_vt.json": "gpt_vt.json", "gpt_accel_penalty.json": "gpt_accel_penalty.json",
               "gpt_diffwrapper.json": "gpt_diffwrapper.json", "hamiltonian.json": "hamiltonian.json",
               "context_vector.json": "context_vector.json", "llama_preln.json": "llama_preln.json",
               "llama_postln.json": "llama_postln.json", "cvfp.json": "cvfp.json", "t5_hybrid.json": "t5_hybrid.json"}
DIFFERENCES = {"hamiltonian.json": {"model.d_model": (128, 112)}}  # non-embedding parameters matched to gpt's


def test_claim_specs_follow_the_benchmark_specs():
    from helpers import ROOT

    def flat(d, pre=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": v})
        return out

    for mine, bench in CLAIM_SPECS.items():
        a = flat(json.loads((ROOT / "specs" / "claims" / mine).read_text()))
        b = flat(json.loads((ROOT / "specs" / "benchmark" / bench).read_text()))
        skip = {"name", "train.max_steps", "train.warmup_steps", "train.checkpoint_every", "eval.every", "analyzers"}
        diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k)}
        assert diff == DIFFERENCES.get(mine, {}), f"specs/claims/{mine} drifted from specs/benchmark/{bench}: {diff}"
        if mine not in ("cvfp.json", "t5_hybrid.json", "llama_preln.json", "llama_postln.json"):
            # cvfp's curriculum ends itself; T5 is tier gpu; the llama specs serve no claim any more
            assert (a["train.max_steps"], a["train.warmup_steps"], a["eval.every"]) == (600, 60, 75), mine
            assert a["train.max_steps"] // a["eval.every"] >= 8, mine  # curves with >= 8 evaluation points


# --- the test the design allows, the page's corrections (#30 item 5) ------------------------------


def test_auto_pairs_arms_that_share_seeds_and_reports_the_correlation_else_welch(tmp_path):
    from scipy import stats as sps

    inst = installed_file(write_claim(tmp_path))
    out = tmp_path / "out"
    base, new = [3.0, 3.4, 3.1], [2.9, 3.25, 3.02]  # seed effects shared: the per-seed differences are tight
    finals(out, inst, "base", base)
    finals(out, inst, "new", new)
    card = card_of(inst, out)
    assert card["design"]["test"] == "paired" and card["design"]["hypothesis"] == "superiority"
    assert card["p"] == pytest.approx(sps.ttest_rel(new, base).pvalue)
    assert card["design"]["correlation"] == pytest.approx(sps.pearsonr(new, base)[0])
    assert card["verdict"] == "supported"  # Welch on the same values would not see it
    assert sps.ttest_ind(new, base, equal_var=False).pvalue > 0.05
    md = cl.markdown_card(card)
    assert "Test: paired t-test by seed (auto: both arms ran seeds 1, 2, 3" in md
    assert f"Pearson's r of the paired values {sps.pearsonr(new, base)[0]:+.2f}" in md
    # the treatment on other seeds: independent samples, Welch's test
    shutil.rmtree(arm_dir(out, inst, "new"))
    finals(out, inst, "new", new, seed0=4)
    card = card_of(inst, out)
    assert card["design"]["test"] == "welch" and "did not run the same seeds" in card["design"]["why"]
    assert card["p"] == pytest.approx(sps.ttest_ind(new, base, equal_var=False).pvalue)
    assert card["design"]["correlation"] is None and card["verdict"] == "inconclusive"
    # an explicit kind is kept
    inst = installed_file(write_claim(tmp_path, "w.json", test={"kind": "welch"}))
    finals(tmp_path / "o2", inst, "base", base)
    finals(tmp_path / "o2", inst, "new", new)
    card = card_of(inst, tmp_path / "o2")
    assert card["design"]["test"] == "welch" and card["design"]["why"] == "the claim file asks for welch"


def test_equivalence_and_non_inferiority_are_decided_by_tost(tmp_path):
    from scipy import stats as sps

    inst = installed_file(write_claim(tmp_path, direction="equivalent", test={"margin": 0.5}))
    out = tmp_path / "out"
    base, new = [3.0, 3.4, 3.1], [3.05, 3.38, 3.2]
    finals(out, inst, "base", base)
    finals(out, inst, "new", new)
    card = card_of(inst, out)
    d = [x - y for x, y in zip(new, base)]
    tost = max(sps.ttest_1samp(d, -0.5, alternative="greater").pvalue, sps.ttest_1samp(d, 0.5, alternative="less").pvalue)
    assert card["design"]["hypothesis"] == "equivalence" and card["p"] == pytest.approx(tost)
    assert card["verdict"] == "supported" and card["reason"] == "equivalent within +-0.5000 (TOST)"
    assert "TOST p (the larger one-sided p) = " in cl.markdown_card(card)
    shutil.rmtree(out)
    finals(out, inst, "base", base)
    finals(out, inst, "new", [x + 1.0 for x in new])  # 1.05 above: outside +-0.5
    card = card_of(inst, out)
    assert card["verdict"] == "contradicted" and card["reason"] == "outside the +-0.5000 margin"
    # non-inferiority (lower is better, margin 0.2): the one-sided test that the difference is below +0.2
    inst = installed_file(write_claim(tmp_path, "ni.json", test={"margin": 0.2}))
    out = tmp_path / "ni"
    finals(out, inst, "base", base)
    finals(out, inst, "new", [x + 0.1 for x in base[:2]] + [base[2] + 0.12])
    card = card_of(inst, out)
    d = [0.1, 0.1, 0.12]
    assert card["design"]["hypothesis"] == "non-inferiority"
    assert card["p"] == pytest.approx(sps.ttest_1samp(d, 0.2, alternative="less").pvalue)
    assert card["verdict"] == "supported" and card["reason"] == "within the margin of 0.2000"
    with pytest.raises(cl.ClaimError, match="direction 'equivalent' needs test.margin > 0"):
        cl.load_claim(write_claim(tmp_path, "bad.json", direction="equivalent"))


def test_holm_within_the_claims_family_and_bh_across_the_page(tmp_path):
    from scipy import stats as sps

    out = tmp_path / "out"
    a = installed_file(write_claim(tmp_path))
    finals(out, a, "base", [3.0, 3.1, 3.2])
    finals(out, a, "new", [2.8, 2.95, 3.0])
    b = installed_file(write_claim(tmp_path, "b.json", id="test.other", metric={"kind": "key", "key": "eval/bpb"}))
    c = installed_file(write_claim(tmp_path, "c.json", id="else.third", metric={"kind": "key", "key": "eval/ppl"}))
    d = installed_file(write_claim(tmp_path, "d.json", id="else.fourth", registration={
        **REG, "family": "test"}))  # declared into the family "test"
    cards = cl.report([a, b, c, d], out)
    by = {x["id"]: x for x in cards}
    assert [by[i]["family"] for i in ("test.better", "test.other", "else.third", "else.fourth")] == \
        ["test", "test", "else", "test"]
    fam = [by[i]["p"] for i in ("test.better", "test.other", "else.fourth")]
    for i, pa in zip(("test.better", "test.other", "else.fourth"), stats.holm(fam)):
        assert by[i]["p_adjusted"] == pytest.approx(pa) and by[i]["family_size"] == 3
    assert by["else.third"]["p_adjusted"] == pytest.approx(by["else.third"]["p"]) and by["else.third"]["family_size"] == 1
    q = sps.false_discovery_control([x["p"] for x in cards])
    assert [x["q_bh"] for x in cards] == pytest.approx(list(q)) and cards[0]["page_size"] == 4
    md = cl.markdown_card(by["test.better"])
    assert "Holm within the family test (3 claims): p = " in md and "Benjamini-Hochberg across the page (4 claims): q = " in md


def test_no_difference_detected_is_never_said():
    """An inconclusive card gives the CI and what the design could detect; it never says "no
    difference detected" (a non-significant test does not show the arms equal)."""
    root = Path(cl.__file__).resolve().parents[2]
    files = [*root.joinpath("kinlm_core").rglob("*.py"), *root.joinpath("tools").rglob("*.py"),
             *root.joinpath("plugins").rglob("*.py"), *root.joinpath("plugins").rglob("*.json")]
    assert files
    for f in files:
        assert "no difference detected" not in f.read_text(errors="replace").lower(), f


# --- pre-registration (#30 item 2) ----------------------------------------------------------------

REG = {"status": "before_runs", "date": "2026-12-05", "quote": "it is better", "quote_where": "a test, section 1",
       "margin_reason": "0: superiority", "family_reason": "one family per source", "tuning_seeds": [9],
       "verdict_seeds": [1, 2, 3]}


def test_registration_is_checked_by_the_schema(tmp_path):
    p = write_claim(tmp_path, registration={**REG, "verdict_seeds": [1, 2]})
    with pytest.raises(cl.ClaimError, match="registration.verdict_seeds lists 2 seeds, seeds says 3"):
        cl.load_claim(p)
    p = write_claim(tmp_path, registration={**REG, "status": "later"})
    with pytest.raises(cl.ClaimError, match=r"claim.json: registration.status: Input should be 'before_runs' or"):
        cl.load_claim(p)
    p = write_claim(tmp_path, registration={k: v for k, v in REG.items() if k != "quote"})
    with pytest.raises(cl.ClaimError, match="claim.json: registration.quote: Field required"):
        cl.load_claim(p)
    assert cl.load_claim(write_claim(tmp_path, registration=REG)).family() == "test"
    # tuning and verdict seeds overlap in a claim registered before its runs: refused, one line
    p = write_claim(tmp_path, registration={**REG, "tuning_seeds": [3, 9]})
    r = kinlm("validate", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (f"{p}: registration: Value error, tuning_seeds and verdict_seeds share seed 3: a claim registered "
            "before_runs picks its choices on seeds that never decide its verdict") in r.stderr
    cl.load_claim(write_claim(tmp_path, registration={**REG, "tuning_seeds": [3], "status": "after_exploratory_runs"}))
    p = write_claim(tmp_path, registration={**REG, "tuning_seeds": []}, lr_grid={"values": [0.001, 0.002]})
    with pytest.raises(cl.ClaimError, match="registration.tuning_seeds is empty: the lr grid needs the seeds"):
        cl.load_claim(p)


def fake_sweeper(launched, value=lambda pt: 3.0 + pt.seed / 10 - (0.5 if pt.name == "new" else 0.0)):
    from kinlm_core import sweep as sw

    def fake_sweep(spec, seeds, grid, sets, out, parallel, echo, manager):
        out_dir, points = sw.plan([str(spec)], seeds, grid, sets, out, manager)
        for pt in points:
            if Path(pt.run_dir, "result.json").exists():
                continue
            launched.append(pt.label())
            v = value(pt)
            fake_run(Path(pt.run_dir), pt.seed, [(10, v + 1), (20, v)])
        return 0

    return fake_sweep


def test_a_claim_is_pre_registered_only_when_every_run_carries_its_hash(tmp_path, monkeypatch):
    from kinlm_core.claims import registration as reg

    launched = []
    monkeypatch.setattr(cl.arms, "_sweep", fake_sweeper(launched))
    monkeypatch.setattr(cl.arms, "_count_params", lambda run, dest, echo: dest.write_text('{"total": 5}'))
    p = write_claim(tmp_path, registration=REG)
    inst = installed_file(p)
    out = tmp_path / "out"
    msgs = []
    assert cl.run([inst], out, echo=msgs.append) == 0 and len(launched) == 6
    h = reg.registration_hash(inst.claim)
    assert any(f"registration {h}" in m for m in msgs)
    stamp = json.loads((arm_dir(out, inst, "new") / "seed_1" / "claims.json").read_text())
    assert stamp["test.better"]["hash"] == h
    card = card_of(inst, out)
    assert card["registration"]["state"] == "pre-registered" and card["registration"]["pre_registered"]
    md = cl.markdown_card(card)
    assert f"Registration: Pre-registered ({h}, registered 2026-12-05)" in md
    assert "Quoted: \"it is better\" (a test, section 1)" in md and "Seeds: tuning 9; verdict 1, 2, 3." in md
    assert "**Verdict: supported**: better than the baseline.\n" in md
    # the margin's reason edited after the runs: changed, never pre-registered
    doc = json.loads(p.read_text())
    doc["registration"]["margin_reason"] = "0.1: chosen after seeing the runs"
    p.write_text(json.dumps(doc))
    card = card_of(installed_file(p), out)
    assert card["registration"]["state"] == "changed" and not card["registration"]["pre_registered"]
    md = cl.markdown_card(card)
    assert "Changed: the claim's pre-registered fields were edited after 6 of its 6 runs existed" in md
    assert "**Verdict: supported**: better than the baseline (not pre-registered: see Registration)." in md
    # a claim registered after the runs it uses exist (it shares their arms): not pre-registered
    late = installed_file(write_claim(tmp_path, "late.json", id="test.late", registration=REG))
    launched.clear()
    assert cl.run([late], out, echo=msgs.append) == 0 and launched == []
    card = card_of(late, out)
    assert card["registration"]["state"] == "registered after runs" and not card["registration"]["pre_registered"]
    # registered after exploratory runs: its own runs carry the hash, yet it is not called pre-registered
    expl = installed_file(write_claim(tmp_path, "expl.json", id="test.expl", seeds=4,
                                      registration={**REG, "status": "after_exploratory_runs",
                                                    "verdict_seeds": [1, 2, 3, 4]}))
    assert cl.run([expl], tmp_path / "out2", echo=msgs.append) == 0
    card = card_of(expl, tmp_path / "out2")
    assert card["registration"]["state"] == "registered after exploratory runs"
    assert "Registered after exploratory runs" in cl.markdown_card(card)
    # no registration block at all
    card = card_of(installed_file(write_claim(tmp_path, "none.json", id="test.none")), out)
    assert card["registration"]["state"] == "not registered"


def test_the_card_flags_tuning_seeds_that_decide_and_runs_off_the_verdict_seeds(tmp_path):
    # overlapping seeds are refused for a claim registered before its runs; after exploratory runs
    # the card says so
    inst = installed_file(write_claim(tmp_path, registration={**REG, "status": "after_exploratory_runs",
                                                              "tuning_seeds": [1], "verdict_seeds": [1, 2, 4]}))
    out = tmp_path / "out"
    finals(out, inst, "base", [3.0, 3.1, 3.2])
    finals(out, inst, "new", [2.0, 2.1, 2.2])
    card = card_of(inst, out)
    notes = card["registration"]["seed_notes"]
    assert "tuning seed 1 also decides the verdict: selection and decision share data" in notes
    assert "base's run of seed 3 left out: not among the registered verdict seeds" in notes
    assert card["arms"][0]["seeds"] == [1, 2] and card["arms"][0]["values"] == [3.0, 3.1]


def test_plan_prints_the_design_and_the_power_from_a_pilot(tmp_path):
    from kinlm_core.claims import registration as reg

    p = write_claim(tmp_path, registration={**REG, "effect_of_interest": 0.3})
    r = cli("claims", "plan", str(p), "--out", str(tmp_path / "none"))
    assert r.exit_code == 0, r.output
    h = reg.registration_hash(cl.load_claim(p))
    assert f"test.better  registration {h} (2026-12-05, before runs)" in r.output
    assert "source: \"it is better\" (a test, section 1)" in r.output
    assert "test: paired t-test by seed (every compared arm runs the registered verdict seeds 1, 2, 3" in r.output
    assert "family: test, 1 claim (one family per source); alpha 0.05" in r.output
    assert "seeds: tuning 9; verdict 1, 2, 3" in r.output
    k = stats.detectable(1 / math.sqrt(3), 2, 0.05)
    assert f"power: no pilot" in r.output and f"is {k:.2f} sigma" in r.output
    assert f"sigma must be at most {0.3 / k:.4g}" in r.output
    # a pilot: two seeds of each arm; their per-seed differences' spread gives the power at 3 seeds
    inst = installed_file(p)
    out = tmp_path / "out"
    finals(out, inst, "base", [3.0, 3.4])
    finals(out, inst, "new", [2.8, 3.1])
    r = cli("claims", "plan", str(p), "--out", str(out), "--json")
    d = json.loads(r.output)[0]
    sd = math.sqrt(0.005)  # differences -0.2 and -0.3
    assert d["pilot"] == {"sd_diff": pytest.approx(sd), "pairs": 2}
    assert d["detectable"] == pytest.approx(stats.detectable(sd / math.sqrt(3), 2, 0.05))
    assert d["power"] == pytest.approx(stats.power(0.3, sd / math.sqrt(3), 2, 0.05))
    r = cli("claims", "plan")
    assert r.exit_code == 2 and "name one or more claims" in r.output


def test_the_shipped_claims_are_registered_after_exploratory_runs():
    items, _ = cl.installed()
    for i in items:
        if i.claim.id not in FIRST_PARTY:
            continue
        r = i.claim.registration
        assert r is not None and r.status == "after_exploratory_runs", i.claim.id
        assert r.quote and r.quote_where and r.margin_reason and r.family_reason
        assert len(r.verdict_seeds) == i.claim.seeds
        assert i.claim.test.kind in ("auto", "one_sample"), i.claim.id
