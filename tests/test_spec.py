"""Spec validation: every kind of bad input gives one clear line per problem, naming file and path."""

import json

import jsonschema
import pytest

from kinlm_core.spec import SpecError, apply_overrides, json_schema, load_spec, validate

from helpers import TINY


def with_(**changes):
    d = json.loads(json.dumps(TINY))
    for path, value in changes.items():
        node = d
        parts = path.split("__")
        for p in parts[:-1]:
            node = node[p]
        if value is DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return json.dumps(d)


DELETE = object()

CASES = [
    # (id, file content, expected substrings of the (single) message)
    ("invalid_json", '{"name": "x",\n  "seed": }', ["invalid JSON at line 2 column"]),
    ("empty_file", "", ["empty file"]),
    ("whitespace_only", "  \n ", ["empty file"]),
    ("not_object", "[1, 2]", ["must be a JSON object, got an array"]),
    ("deep_nesting", "[" * 5000 + "]" * 5000, ["nesting 5000 levels deep"]),
    ("not_utf8", b'{"name": "\xff\xfe"}', ["not UTF-8"]),
    ("unknown_model_type", with_(model__type="gtp"), ["model.type: unknown model type 'gtp'", "did you mean 'gpt'"]),
    ("unknown_data_type", with_(data__type="embeded"), ["data.type: unknown data_source type 'embeded'", "embedded"]),
    ("wrong_value_type", with_(model__n_layer="four"), ["model.n_layer:", "integer", '"four"']),
    ("steps_zero", with_(train__max_steps=0), ["train.max_steps:", "greater than 0"]),
    ("lr_negative", with_(train__lr=-1), ["train.lr:", "greater than 0"]),
    ("unknown_field", with_(model__n_layers=2), ["model.n_layers: unknown field", "did you mean 'n_layer'"]),
    ("unknown_top_field", with_(trian={}), ["trian: unknown field", "did you mean 'train'"]),
    ("missing_section", with_(model=DELETE), ["model: required section is missing"]),
    ("missing_type", with_(model={"n_layer": 2}), ['model: missing "type"', "gpt"]),
    ("requires_missing", with_(requires={"kinlm-nonexistent": ">=0.1"}),
     ["requires.kinlm-nonexistent: 'kinlm-nonexistent' is not installed", "kinlm install 'kinlm-nonexistent>=0.1'"]),
    ("requires_version", with_(requires={"kinlm-core": ">=99"}), ["requires.kinlm-core: installed", "does not satisfy '>=99'"]),
    ("list_item_error", with_(generate=[{"type": "sample", "top_k": 0}]), ["generate[0].top_k:"]),
]


@pytest.mark.parametrize("case_id,content,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_gives_one_clear_line(tmp_path, case_id, content, expected):
    p = tmp_path / "bad.json"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert len(e.value.problems) == 1, e.value.problems
    line = e.value.problems[0]
    assert line.startswith(f"{p}: "), line
    assert "\n" not in line
    for s in expected:
        assert s in line, f"{s!r} not in {line!r}"


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.json")


def test_all_problems_reported_in_one_pass(tmp_path):
    d = json.loads(with_(model__n_layer="x", train__lr=0, train__max_steps=-1))
    d["eval"]["every"] = 0
    d["requires"] = {"kinlm-nope": ">=1"}
    with pytest.raises(SpecError) as e:
        validate(d, "s.json")
    paths = sorted(line.split(": ")[1] for line in e.value.problems)
    assert paths == ["eval.every", "model.n_layer", "requires.kinlm-nope", "train.lr", "train.max_steps"]


def test_valid_spec_round_trips():
    spec = validate(json.loads(json.dumps(TINY)))
    again = validate(spec.model_dump(mode="json"))
    assert again == spec
    assert spec.model.n_layer == 1 and spec.train.grad_accum == 1  # defaults filled in


def test_set_overrides():
    d = json.loads(json.dumps(TINY))
    apply_overrides(d, ["train.max_steps=10", "model.dropout=0.2", "name=other", "model.type=gpt",
                        "eval.split=test", "generate=[{\"type\": \"sample\"}]"])
    spec = validate(d)
    assert spec.train.max_steps == 10 and spec.model.dropout == 0.2 and spec.name == "other"
    assert spec.eval.split == "test" and spec.generate[0].type == "sample"
    apply_overrides(d, ["generate.0.prompt=Hi"])
    assert validate(d).generate[0].prompt == "Hi"
    with pytest.raises(SpecError, match="expected dotted.path=VALUE"):
        apply_overrides(d, ["train.max_steps"])
    with pytest.raises(SpecError, match="does not exist"):
        apply_overrides(d, ["generate.5.prompt=x"])


def test_schema_accepts_valid_rejects_unknown_type():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    good = json.loads(json.dumps(TINY))
    assert not list(v.iter_errors(good))
    bad = json.loads(json.dumps(TINY))
    bad["model"]["type"] = "nonexistent"
    assert list(v.iter_errors(bad))
    bad2 = json.loads(json.dumps(TINY))
    bad2["model"]["n_layers"] = 3
    assert list(v.iter_errors(bad2))


@pytest.mark.parametrize("spec_file", sorted(__import__("pathlib").Path(__file__).parents[1].glob("specs/*.json")))
def test_shipped_specs_validate_and_match_schema(spec_file):
    data = json.loads(spec_file.read_text())
    validate(data, str(spec_file))
    jsonschema.validate(data, json_schema())
