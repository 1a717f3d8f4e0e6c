"""Manipulation checks (#30 item 6): the schema field, and the rule on planted runs: a claim whose
treatment did not do what its method says (the penalised acceleration not lower in the penalised
arm) cannot come out "supported", whatever its own test says."""

import json
from pathlib import Path

import pytest

from kinlm_core import claims as cl
from kinlm_core import stats

SPEC = {"name": "base", "seed": 1, "data": {"type": "embedded", "corpus": "tinyshakespeare", "max_docs": 50},
        "tokenizer": {"type": "byte"}, "model": {"type": "gpt", "n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 32},
        "train": {"max_steps": 4, "batch_size": 2, "block_size": 32, "lr": 3e-3, "warmup_steps": 1}}
CHECK = {"name": "accel", "label": "penalised acceleration",
         "metric": {"kind": "analyzer", "analyzer": "trajectory", "key": "accel/layer_4"}, "direction": "lower"}


def claim_doc(**kw):
    doc = {"claim": 1, "id": "test.manip", "title": "The penalty helps", "source": {"statement": "s", "where": "w"},
           "arms": [{"name": "base", "role": "baseline", "spec": "spec.json"},
                    {"name": "new", "role": "treatment", "spec": "spec.json", "set": ["model.n_layer=2", "name=new"]}],
           "metric": {"kind": "key", "key": "eval/loss"}, "direction": "lower", "tier": "cpu", "seeds": 3,
           "manipulation_checks": [CHECK]}
    doc.update(kw)
    return doc


def write(tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    p = tmp_path / "claim.json"
    p.write_text(json.dumps(claim_doc(**kw)))
    return cl.Installed(cl.load_claim(p), p, "")


@pytest.mark.parametrize("kw, message", [
    ({"manipulation_checks": [{**CHECK, "arm": "nope"}]},
     "manipulation check accel: arm 'nope' is not an arm of the claim other than the treatment"),
    ({"manipulation_checks": [{**CHECK, "arm": "new"}]},
     "manipulation check accel: arm 'new' is not an arm of the claim other than the treatment"),
    ({"manipulation_checks": [{**CHECK, "name": "base"}]},
     "manipulation_checks names must differ from each other and from the arms' and controls': base"),
    ({"manipulation_checks": [{**CHECK, "direction": "equivalent"}]},
     "manipulation_checks[0].direction: Input should be 'higher', 'lower' or 'different'"),
    ({"arms": [{"name": "new", "role": "treatment", "spec": "spec.json"}], "test": {"kind": "one_sample", "value": 1.0}},
     "manipulation check accel: the claim has no baseline arm; name the compared arm with `arm`"),
])
def test_manipulation_check_schema_errors_name_the_file(tmp_path, kw, message):
    (tmp_path / "c.json").write_text(json.dumps(claim_doc(**kw)))
    with pytest.raises(cl.ClaimError) as e:
        cl.load_claim(tmp_path / "c.json")
    assert str(e.value).startswith(f"{tmp_path / 'c.json'}: ") and message in str(e.value)


def plant(folder, seed, loss, accel=None):
    """A finished run with its final validation loss and (optionally) a trajectory analysis."""
    d = Path(folder) / f"seed_{seed}"
    d.mkdir(parents=True)
    (d / "spec.json").write_text(json.dumps({"name": Path(folder).name, "seed": seed}))
    (d / "result.json").write_text(json.dumps({"status": "finished", "tokens_seen": 1000}))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 4, "eval/loss": loss}) + "\n")
    if accel is not None:
        a = d / "analysis" / "trajectory" / "step_0000004"
        a.mkdir(parents=True)
        (a / "metrics.json").write_text(json.dumps({"accel/layer_4": accel, "layers": 5}))


def report(tmp_path, base_accel, new_accel, base=(5.0, 5.1, 5.05), new=(4.0, 4.1, 4.02)):
    inst = write(tmp_path)
    out = tmp_path / "out"
    for name, losses, accels in (("base", base, base_accel), ("new", new, new_accel)):
        arm = next(a for a in inst.claim.arms if a.name == name)
        folder = out / "arms" / cl.arm_key(arm, inst.path) / cl.spec_name(arm, inst.path)
        for s, (v, a) in enumerate(zip(losses, accels), 1):
            plant(folder, s, v, a)
    return cl.report([inst], out)[0]


def test_a_passed_check_keeps_the_verdict_and_is_shown_on_the_card(tmp_path):
    card = report(tmp_path, [3.0, 3.2, 3.1], [2.0, 2.3, 2.05])
    assert card["verdict"] == "supported"
    row = card["manipulation"][0]
    ref = stats.paired([2.0, 2.3, 2.05], [3.0, 3.2, 3.1])  # the arms ran seeds 1-3: paired by seed
    assert row["passed"] is True and row["against"] == "base"
    assert row["test"]["test"] == "paired" and row["test"]["p"] == pytest.approx(ref.p)
    assert row["test"]["difference"] == pytest.approx(ref.difference) == pytest.approx((-1.0 - 0.9 - 1.05) / 3)
    md = cl.markdown_card(card)
    assert ("Manipulation check penalised acceleration (trajectory: accel/layer_4, the treatment lower than base): "
            "new 2.1167; base 3.1000; treatment - base -0.9833") in md
    assert "(paired by seed, unadjusted): passed." in md
    assert cl.json_card(card)["manipulation"][0]["passed"] is True


def test_a_failed_check_makes_a_supported_verdict_inconclusive(tmp_path):
    """The claim's own test is significant, but the penalised acceleration is not lower."""
    card = report(tmp_path, [3.0, 3.2, 3.1], [3.1, 3.15, 3.2])
    assert card["comparison"]["p"] < 0.05 and card["difference"] < 0  # the claim's own test alone: supported
    assert card["verdict"] == "inconclusive"
    assert card["reason"].startswith("the manipulation check did not pass: penalised acceleration (trajectory: "
                                     "accel/layer_4, the treatment lower than base): new 3.1500; base 3.1000")
    assert card["manipulation"][0]["passed"] is False
    # significantly on the wrong side fails too
    card = report(tmp_path / "b", [3.0, 3.2, 3.1], [4.0, 4.3, 4.05])
    assert card["verdict"] == "inconclusive" and card["manipulation"][0]["test"]["p"] < 0.05


def test_a_check_that_cannot_be_computed_keeps_the_verdict_from_supported(tmp_path):
    card = report(tmp_path, [3.0, 3.2, 3.1], [None, None, None])
    assert card["verdict"] == "inconclusive"
    assert "could not be computed: 0 and 3 value(s)" in card["reason"]
    assert any("no analysis/trajectory" in p for p in card["problems"])


def test_a_check_does_not_turn_an_unsupported_verdict_into_anything_else(tmp_path):
    card = report(tmp_path, [3.0, 3.2, 3.1], [2.0, 2.3, 2.05], new=(5.2, 5.3, 5.25))
    assert card["verdict"] == "contradicted" and card["manipulation"][0]["passed"] is True


def test_manipulation_checks_are_pre_registered_and_planned(tmp_path):
    with_check = write(tmp_path / "a")
    without = write(tmp_path / "b", manipulation_checks=[])
    assert cl.registration_hash(with_check.claim) != cl.registration_hash(without.claim)
    # a claim without checks hashes as before the field existed (no key in the hashed fields)
    from kinlm_core.claims.registration import registered_fields
    assert "manipulation_checks" not in registered_fields(without.claim)
    text = cl.plan_text(cl.plan(with_check, tmp_path / "none", 1))
    assert ("  manipulation checks: accel (the treatment's trajectory: accel/layer_4 lower than the baseline's)\n"
            in text + "\n")


def test_claims_plan_prints_the_pages_estimate_first():
    from helpers import kinlm

    items, _ = cl.installed()
    cpu = [i.claim for i in items if i.claim.tier == "cpu"]
    total = sum(c.budget_minutes for c in cpu)
    r = kinlm("claims", "plan", "--all", "--out", "/nonexistent-kinlm-runs")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"Estimated regeneration of the {len(cpu)} CPU-tier claims: {total:g} minutes "
                            f"({total / 60:.1f} h) of runs on 2 CPU cores")
    assert total <= 240  # #30 item 7: the page regenerates in at most 4 hours on 2 cores
    shipped = {i.claim.id: i.claim for i in items}
    assert [m.metric.key for m in shipped["accel_penalty.perplexity"].manipulation_checks] == \
        ["accel/layer_1", "accel/layer_3", "accel/layer_4"]  # the penalised layers {1, L//2 + 1, L} of 4
    assert shipped["accel_penalty.perplexity"].direction == "different"  # the source states no direction
    assert "token_geometry.preln_vs_postln" not in shipped  # its source claims no difference
    seq = next(a for a in shipped["cvfp.parallel_vs_sequential"].arms if a.name == "sequential")
    assert "curriculum.through_time=true" in seq.set
    row = next(r for r in cl.listing(items) if r["id"] == "accel_penalty.perplexity")  # `kinlm claims` shows them
    assert row["manipulation_checks"] == ["accel_layer_1 (lower)", "accel_layer_3 (lower)", "accel_layer_4 (lower)"]
