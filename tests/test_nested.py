"""Nested component configs (kinlm_core.nested): one helper, the same one-line error with the JSON
path wherever a config embeds another component's config (the phases curriculum's objective here;
diff_wrapper's and vt_embeddings' inner model in their plugins' tests)."""

import pytest
from pydantic import ValidationError

from kinlm_core import ModelConfig, NestedConfig, component
from kinlm_core.spec import SpecError, validate

BASE = {"name": "x", "data": {"type": "embedded"}, "model": {"type": "gpt", "n_layer": 1, "n_head": 1, "d_model": 8}}


def problems(spec: dict) -> list[str]:
    with pytest.raises(SpecError) as e:
        validate(spec, "s.json", check_requires=False)
    return str(e.value).splitlines()


def phases(*objectives) -> dict:
    return {**BASE, "curriculum": {"type": "phases", "phases": [
        {"name": f"p{i}", "steps": 1, "objective": o} for i, o in enumerate(objectives)]}}


def test_phase_objectives_errors_are_one_line_each_with_their_path():
    lines = problems(phases({"type": "causal_lm"}, {"type": "span_corruption", "noise_density": 2},
                            {"type": "spam"}, {"noise_density": 0.1}, "span_corruption"))
    assert len(lines) == 4, lines
    assert lines[0] == "s.json: curriculum.phases[1].objective.noise_density: input should be less than 1 (got 2)"
    assert lines[1].startswith("s.json: curriculum.phases[2].objective.type: unknown objective type 'spam'; "
                               "known: causal_lm, ")
    assert lines[2].startswith('s.json: curriculum.phases[3].objective: missing "type"; one of: causal_lm, ')
    assert lines[3] == ('s.json: curriculum.phases[4].objective: must be an object with a "type", '
                        'e.g. {"type": "causal_lm"} (got "span_corruption")')


def test_a_phase_objective_is_the_registered_config_with_its_defaults():
    spec = validate(phases({"type": "span_corruption", "noise_density": 0.3}, None), "s.json", check_requires=False)
    first, second = spec.curriculum.schedule(10)
    assert first.objective == component("objective", "span_corruption")(noise_density=0.3)
    assert second.objective is None
    dumped = spec.model_dump(mode="json")["curriculum"]["phases"][0]["objective"]
    assert dumped["type"] == "span_corruption" and dumped["noise_density"] == 0.3 and "mean_span_length" in dumped


def test_the_helper_on_a_config_of_ones_own():
    Inner = NestedConfig("model", exclude=("holder",), owner="a holder")

    class Holder(ModelConfig):
        type: str = "holder"
        inner: Inner

    assert Holder(inner={"type": "gpt", "n_layer": 2}).inner.n_layer == 2
    with pytest.raises(ValidationError) as e:
        Holder(inner={"type": "gpt", "n_layer": 0})
    assert e.value.errors()[0]["loc"] == ("inner", "n_layer")
    with pytest.raises(ValidationError) as e:
        Holder(inner={"type": "holder"})
    assert e.value.errors()[0]["loc"] == ("inner", "type") and "a holder cannot hold a holder" in str(e.value)
