"""Issue #33, the core side: HFExport custom-code folders, kinlm_core.testing.check_hf_export (a
process where kinlm cannot be imported), the model card, and loading a custom-code final/ back."""

import json
import os

import pytest
import torch
import yaml

from kinlm_core import HFExport, component
from kinlm_core.data.tokenizers import ByteTokenizer
from kinlm_core.engine.export import export_final
from kinlm_core.engine.load import load_final
from kinlm_core.testing import check_hf_export, load_export_without_kinlm

pytestmark = pytest.mark.slow  # loads exports in a separate process: seconds each

TOY_CONFIG = '''
from transformers import PretrainedConfig


class ToyConfig(PretrainedConfig):
    model_type = "kinlm_toy"

    def __init__(self, vocab_size=10, d=8, **kwargs):
        self.vocab_size, self.d = vocab_size, d
        super().__init__(**kwargs)
'''

TOY_MODELING = '''
import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_kinlm_toy import ToyConfig
from .toy_block import mean_so_far


class ToyForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ToyConfig

    def __init__(self, config):
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.d)
        self.head = nn.Linear(config.d, config.vocab_size)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls):  # no cache: generate re-runs the prefix
        return False

    def prepare_inputs_for_generation(self, input_ids, **kwargs):  # the whole prefix, every token
        return {"input_ids": input_ids}

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return CausalLMOutput(logits=self.head(torch.tanh(mean_so_far(self.emb(input_ids)))))
'''

TOY_BLOCK = '''
import torch


def mean_so_far(h):
    return h.cumsum(1) / torch.arange(1, h.size(1) + 1, device=h.device).view(1, -1, 1)
'''


class Toy(torch.nn.Module):
    """A kinlm model (ModelOutput-like) whose export is the modeling file above; ``prefix`` names its
    weights differently from the export's, as a real model's may."""

    def __init__(self, vocab_size=257, d=8, prefix=""):
        super().__init__()
        self.core = torch.nn.ModuleDict({"emb": torch.nn.Embedding(vocab_size, d), "head": torch.nn.Linear(d, vocab_size)})
        self.vocab_size, self.d, self.block_size = vocab_size, d, None

    def forward(self, input_ids, output_hidden_states=False):
        from kinlm_core import ModelOutput

        h = self.core["emb"](input_ids)
        h = h.cumsum(1) / torch.arange(1, h.size(1) + 1).view(1, -1, 1)
        return ModelOutput(logits=self.core["head"](torch.tanh(h)))

    def hf_export(self, tokenizer):
        sd = {"emb.weight": self.core["emb"].weight, "head.weight": self.core["head"].weight,
              "head.bias": self.core["head"].bias}
        return HFExport(name="kinlm_toy", config={"vocab_size": self.vocab_size, "d": self.d},
                        config_class="ToyConfig", model_class="ToyForCausalLM",
                        files={"configuration_kinlm_toy.py": TOY_CONFIG, "modeling_kinlm_toy.py": TOY_MODELING,
                               "toy_block.py": TOY_BLOCK},
                        state_dict=sd, readme_notes="Toy notes: nothing to steer.")


def toy():
    torch.manual_seed(0)
    return Toy().eval()


def test_a_custom_code_export_loads_without_kinlm_with_equal_logits_and_greedy_tokens(tmp_path):
    got = check_hf_export(toy(), ByteTokenizer(), tmp_path, max_new_tokens=6)
    assert got["class"] == "ToyForCausalLM" and got["tokens"].shape == (2, 12 + 6)
    folder = got["folder"]
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "configuration_kinlm_toy.py", "modeling_kinlm_toy.py", "toy_block.py",
            "model.safetensors", "tokenizer.json", "generation_config.json", "README.md",
            "kinlm_model.safetensors"} <= names  # kinlm's names differ from the export's: its own weights too
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "kinlm_toy" and cfg["architectures"] == ["ToyForCausalLM"]
    assert cfg["auto_map"] == {"AutoConfig": "configuration_kinlm_toy.ToyConfig",
                               "AutoModelForCausalLM": "modeling_kinlm_toy.ToyForCausalLM"}
    assert cfg["eos_token_id"] == 256 and cfg["vocab_size"] == 257
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 256
    assert "custom-code folder (ToyForCausalLM, trust_remote_code=True" in got["message"]


def test_check_hf_export_fails_when_the_modeling_file_computes_something_else(tmp_path):
    model = toy()
    wrong = model.hf_export
    model.hf_export = lambda tok: HFExport(**{**wrong(tok).__dict__, "files": {
        **wrong(tok).files, "toy_block.py": TOY_BLOCK.replace("h.cumsum(1)", "1.001 * h.cumsum(1)")}})
    with pytest.raises(AssertionError, match="exported logits differ from kinlm's"):
        check_hf_export(model, ByteTokenizer(), tmp_path)


def test_the_loading_process_cannot_import_kinlm(tmp_path):
    model = toy()
    bad = model.hf_export
    model.hf_export = lambda tok: HFExport(**{**bad(tok).__dict__, "files": {
        **bad(tok).files, "toy_block.py": "import kinlm_core\n" + TOY_BLOCK}})
    export_final(model, None, ByteTokenizer(), tmp_path / "e")
    with pytest.raises(AssertionError, match="kinlm_core: kinlm is not importable in this process"):
        load_export_without_kinlm(tmp_path / "e", [[1, 2, 3]], 2)


def test_an_export_with_problems_is_refused_with_what_is_wrong(tmp_path):
    model = toy()
    good = model.hf_export
    model.hf_export = lambda tok: HFExport(**{**good(tok).__dict__, "name": "kinlm-toy", "task": "mlm"})
    with pytest.raises(RuntimeError, match=r"Toy.hf_export: name 'kinlm-toy' is not a Python identifier; "
                                           r"files has no configuration_kinlm-toy.py.*task 'mlm' is not one of"):
        export_final(model, None, ByteTokenizer(), tmp_path / "e")
    # transformers 4.x (supported from 4.40) renames weights named *beta*/*gamma* on loading: refused
    model.hf_export = lambda tok: HFExport(**{**good(tok).__dict__, "state_dict": {
        **good(tok).state_dict, "mix.beta": torch.zeros(2)}})
    with pytest.raises(RuntimeError, match=r"state_dict names \['mix.beta'\] hold 'beta' or 'gamma'"):
        export_final(model, None, ByteTokenizer(), tmp_path / "e2")


def test_a_custom_code_final_folder_loads_back_into_kinlm(tmp_path):
    model = toy()
    export_final(model, None, ByteTokenizer(), tmp_path / "final")
    back = Toy()
    load_final(back, tmp_path / "final", "cpu")
    x = torch.randint(0, 257, (1, 9))
    assert torch.equal(back(x).logits, model(x).logits)
    # an export whose state_dict is the model's own: no second copy, and model.safetensors loads back
    same = toy()
    same.hf_export = lambda tok: HFExport(**{**Toy.hf_export(same, tok).__dict__, "state_dict": same.state_dict()})
    export_final(same, None, ByteTokenizer(), tmp_path / "f2")
    assert not (tmp_path / "f2" / "kinlm_model.safetensors").exists()
    back = Toy()
    load_final(back, tmp_path / "f2", "cpu")
    assert torch.equal(back(x).logits, same(x).logits)


def test_the_gpt_models_gpt2_export_passes_check_hf_export(tmp_path):
    torch.manual_seed(0)
    model = component("model", "gpt")(n_layer=2, n_head=2, d_model=32, block_size=24, bias=False).build(257).eval()
    got = check_hf_export(model, ByteTokenizer(), tmp_path, max_new_tokens=5)
    assert got["class"] == "GPT2LMHeadModel"


def test_model_card_yaml_and_facts(tmp_path):
    from helpers import TINY
    from kinlm_core.spec import validate

    spec = validate(json.loads(json.dumps(TINY)))
    run = tmp_path / "run"
    (run / "analysis" / "blimp" / "step_0000006").mkdir(parents=True)
    (run / "analysis" / "blimp" / "step_0000006" / "metrics.json").write_text(json.dumps({"overall": 0.55, "pairs": 40}))
    result = {"status": "finished", "step": 6, "params": 12345, "tokens_seen": 768, "eval/loss": 2.5,
              "eval/ppl": 12.18, "eval/bpb": 3.61}
    (run / "result.json").write_text(json.dumps(result))
    export_final(toy(), spec, ByteTokenizer(), run / "final", run_dir=run)
    text = (run / "final" / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["kinlm", "gpt", "causal_lm", "custom_code"]
    assert meta["datasets"] == ["tinyshakespeare"]
    assert meta["metrics"] == ["loss", "perplexity", "bits_per_byte", "blimp"]
    for line in ("| parameters | 12,345 |", "| tokens seen | 768 |", "| eval loss | 2.5000 |",
                 "| eval bits per byte | 3.6100 |", "| BLiMP accuracy | 0.5500 on 40 pairs |",
                 "| model | gpt (kinlm-core", "trust_remote_code=True", "Toy notes: nothing to steer."):
        assert line in text, line
    spec_block = text.split("```json\n")[1].split("```")[0]
    assert json.loads(spec_block) == json.loads((run / "final" / "spec.json").read_text())


OTHER_PYTHONS = [p for p in os.environ.get("KINLM_TEST_TRANSFORMERS_PYTHONS", "").split(os.pathsep) if p]


@pytest.mark.skipif(not OTHER_PYTHONS, reason="set KINLM_TEST_TRANSFORMERS_PYTHONS to interpreters with other "
                    "transformers versions (e.g. a venv with transformers 4.40) to test the exports there")
@pytest.mark.parametrize("python", OTHER_PYTHONS or [None])
def test_exports_load_in_other_transformers_versions(tmp_path, python):
    got = check_hf_export(toy(), ByteTokenizer(), tmp_path / "toy", python=python)
    torch.manual_seed(0)
    model = component("model", "gpt")(n_layer=1, n_head=2, d_model=32, block_size=24).build(257).eval()
    gpt2 = check_hf_export(model, ByteTokenizer(), tmp_path / "gpt", python=python)
    print(python, got["transformers"], gpt2["transformers"])


def test_a_gpt2_export_has_a_card_without_custom_code(tmp_path):
    from helpers import TINY
    from kinlm_core.spec import validate

    spec = validate(json.loads(json.dumps(TINY)))
    model = component("model", "gpt")(n_layer=1, n_head=2, d_model=32, block_size=32).build(257).eval()
    export_final(model, spec, ByteTokenizer(), tmp_path / "final", result={"step": 3})  # an export of step 3
    text = (tmp_path / "final" / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["tags"] == ["kinlm", "gpt", "causal_lm"] and "metrics" not in meta  # nothing measured at step 3
    assert "| transformers class | GPT2LMHeadModel |" in text and "| steps | 3 |" in text
    assert "trust_remote_code" not in text and "eval loss" not in text
    assert f"| parameters | {sum(p.numel() for p in model.parameters()):,} |" in text


def test_push_to_hub_uploads_the_folder_and_a_failure_keeps_it(tmp_path, monkeypatch):
    import click
    import huggingface_hub

    from kinlm_core import cli

    calls = []

    class FakeApi:
        def create_repo(self, repo, **kw):
            calls.append(("create", repo, kw))

        def upload_folder(self, **kw):
            calls.append(("upload", kw["repo_id"], kw["folder_path"]))
            if kw["repo_id"] == "me/broken":
                raise OSError("401 Unauthorized")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    cli._push_to_hub(tmp_path, "me/model")
    assert calls == [("create", "me/model", {"repo_type": "model", "exist_ok": True}),
                     ("upload", "me/model", str(tmp_path))]
    with pytest.raises(click.ClickException) as e:
        cli._push_to_hub(tmp_path, "me/broken")
    assert e.value.exit_code == 2 and "401 Unauthorized" in e.value.message and str(tmp_path) in e.value.message


def test_hfexport_imports_without_torch():
    from kinlm_core.testing import check_imports_without_torch

    check_imports_without_torch("kinlm_core.hfexport")


def test_an_encoder_decoder_export_passes_check_hf_export(tmp_path):
    cfg = {"model_type": "t5", "d_model": 16, "d_ff": 32, "d_kv": 8, "num_layers": 1, "num_heads": 2,
           "vocab_size": 257, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 256}
    torch.manual_seed(0)
    model = component("model", "transformers")(config=cfg).build(257).eval()
    got = check_hf_export(model, ByteTokenizer(), tmp_path, max_new_tokens=4)
    assert got["class"] == "T5ForConditionalGeneration" and got["tokens"].shape == (2, 1 + 4)


def test_a_wrapper_without_an_export_is_not_exported_as_its_inner_model(tmp_path):
    """A ModelWrapper around gpt that offers no hf_export, or whose hf_export property raises
    AttributeError (the wrappers' way to say "not around this inner model"), is written as kinlm's
    safetensors + spec.json with the line saying so: never as the bare inner gpt (a GPT2LMHeadModel
    would drop the wrapper's equation)."""
    from kinlm_core import ModelWrapper

    class Plain(ModelWrapper):
        def __init__(self, inner):
            super().__init__(inner, modules=list(inner.blocks))

        def forward(self, input_ids, output_hidden_states=False, **batch):
            with self.outputs_replaced(batch):
                return self.call_inner(input_ids, output_hidden_states, **batch)

        def replace(self, i, h, inputs, batch):
            return 2 * h

    class Refusing(Plain):
        @property
        def hf_export(self):
            raise AttributeError("no export around this inner model")

    inner = component("model", "gpt")(n_layer=1, n_head=2, d_model=32, block_size=16).build(257)
    for cls in (Plain, Refusing):
        line = export_final(cls(inner), None, ByteTokenizer(), tmp_path / cls.__name__)
        assert line.endswith(f"model.safetensors + spec.json (the '{cls.__name__}' model has no transformers "
                             "counterpart and no hf_export; load it with kinlm_core.load_run)"), line
        assert [p.name for p in (tmp_path / cls.__name__).iterdir()] == ["model.safetensors"]
