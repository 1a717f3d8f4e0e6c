"""The token_geometry analyzer: every measure on hand-made vectors (2 texts x 3 tokens x 2 dims),
the source's layer indexing, padding never counted, the outputs on a tiny random model, model
comparisons and the before/after evolution figures."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from kinlm_core import ModelOutput

from kinlm_token_geometry.analysis import (CrossText, aggregate, heatmap_layers, intra_similarity, packaged_prompts,
                                           pairwise_cosine, text_metrics)
from kinlm_token_geometry.config import LlamaLikeConfig, TokenGeometryConfig

TEXTS = ["The river runs past the old mill and into the sea.", "A short one.",
         "Numbers like 1, 2 and 3 are small; 1000 is larger than all of them put together."]


def model(placement="postln", seed=0, n_layer=4):
    torch.manual_seed(seed)
    return LlamaLikeConfig(d_model=32, n_layer=n_layer, n_head=4, block_size=128, dropout=0.0,
                           placement=placement).build(257).eval()


def test_cosine_on_hand_made_vectors():
    e1, e2, d = [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]
    # pairs: (e1, e2) = 0, (e1, d) = (e2, d) = 1/sqrt(2); each counted in both orders, diagonal excluded
    assert pairwise_cosine(torch.tensor([e1, e2, d])) == pytest.approx(2 / math.sqrt(2) / 3, abs=1e-6)
    assert pairwise_cosine(torch.tensor([[2.0, 0.0], [5.0, 0.0], [0.1, 0.0]])) == pytest.approx(1.0)
    assert pairwise_cosine(torch.tensor([[1.0, 2.0], [-3.0, -6.0]])) == pytest.approx(-1.0)
    m = text_metrics([torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([[3.0, 4.0], [0.0, 2.0]])])
    assert m["norm"] == pytest.approx([3.0, 3.5])          # mean of |(3,4)| = 5 and 1, then 5 and 2
    assert m["update_norm"][0] is None and m["update_norm"][1] == pytest.approx(0.5)  # (0 + 1) / 2
    assert m["pairwise_cosine"] == pytest.approx([0.8, 0.8])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        pairwise_cosine(torch.ones(1, 4))


S = 1 / math.sqrt(2)
A = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])     # text A, token ids 5 6 7; unit rows (1,0) (0,1) (s,s)
B = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])    # text B, token ids 7 5 5; unit rows (1,0) (-1,0) (0,1)


def test_ethayarajh_measures_on_two_texts_by_hand():
    # intra-sentence similarity: each token's cosine to its text's mean vector
    # A: mean (2/3, 2/3) -> cosines s, s, 1;  B: mean (0, 2/3) -> cosines 0, 0, 1
    assert intra_similarity(A) == pytest.approx((2 * S + 1) / 3)
    assert intra_similarity(B) == pytest.approx(1 / 3)
    # anisotropy: the mean cosine over the 9 cross-text pairs (both orders give the same mean)
    # (1,0): 1 -1 0 | (0,1): 0 0 1 | (s,s): s -s s  -> (1 + s) / 9
    cross = CrossText()
    cross.add([5, 6, 7], [A])
    cross.add([7, 5, 5], [B])
    assert cross.anisotropy() == pytest.approx([(1 + S) / 9])
    # self-similarity: token 5 (A: (1,0); B's first 5: (-1,0)) -> -1; token 7 (A: (s,s); B: (1,0)) -> s
    selfsim, words = cross.self_similarity(2)
    assert words == 2 and selfsim == pytest.approx([(S - 1) / 2])
    assert cross.self_similarity(3) == (None, 0)
    one = CrossText()
    one.add([5, 6, 7], [A])
    assert one.anisotropy() is None                        # no pair of tokens from different texts

    m = aggregate(TokenGeometryConfig(self_similarity_min_contexts=2),
                  {"per_text": [text_metrics([A]), text_metrics([B])], "grads": None, "cross": cross})
    intra = ((2 * S + 1) / 3 + 1 / 3) / 2
    assert m["intra_similarity_per_layer"] == pytest.approx([intra])
    assert m["std_intra_similarity_per_layer"] == pytest.approx([abs((2 * S + 1) / 3 - 1 / 3) / 2])
    assert m["anisotropy_per_layer"] == pytest.approx([(1 + S) / 9])
    assert m["intra_similarity_adjusted_per_layer"] == pytest.approx([intra - (1 + S) / 9])
    assert m["self_similarity_adjusted_per_layer"] == pytest.approx([(S - 1) / 2 - (1 + S) / 9])
    # the source's within-text pairwise cosine: A (0 + s + s) * 2 / 6, B (-1 + 0 + 0) * 2 / 6
    assert m["pairwise_cosine_per_layer"] == pytest.approx([(2 * S / 3 - 1 / 3) / 2])
    assert m["norm_per_layer"] == pytest.approx([((2 + math.sqrt(2)) / 3 + 4 / 3) / 2])


def test_source_layer_indexing_hooks_block_outputs_then_the_final_norm(tmp_path, kinlm_tokenizer):
    net = model(n_layer=3)
    ids = torch.tensor([kinlm_tokenizer.encode(TEXTS[0])])
    with torch.no_grad():
        hs = net(ids, output_hidden_states=True).hidden_states        # embeddings, blocks 1..2, N_f(block 3)
        h, blocks = hs[0], []
        for blk in net.blocks:
            h, _ = blk(h)
            blocks.append(h)
        expected = blocks + [net.norm_f(blocks[-1])]                    # the source: blocks 0..2, then N_f
    m = TokenGeometryConfig(layers="source", figures=False).analyze(net, kinlm_tokenizer, [TEXTS[0]], tmp_path / "s")
    assert m["layers"] == 4 and m["layer_indexing"] == "source"
    assert m["pairwise_cosine_per_layer"] == pytest.approx([pairwise_cosine(x[0]) for x in expected], abs=1e-6)
    assert m["norm_per_layer"] == pytest.approx([float(x[0].norm(dim=-1).mean()) for x in expected], rel=1e-5)
    kin = TokenGeometryConfig(figures=False).analyze(net, kinlm_tokenizer, [TEXTS[0]], tmp_path / "k")
    assert kin["pairwise_cosine_per_layer"][1:3] == pytest.approx(m["pairwise_cosine_per_layer"][0:2], abs=1e-6)
    assert kin["pairwise_cosine_per_layer"][3] == pytest.approx(m["pairwise_cosine_per_layer"][3], abs=1e-6)

    class NoBlocks(torch.nn.Module):
        block_size = 16

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

        def forward(self, input_ids, output_hidden_states=False):
            return ModelOutput(logits=torch.zeros(*input_ids.shape, 257))

    with pytest.raises(ValueError, match="layers='source' .* needs a model with .blocks and .norm_f .*NoBlocks"):
        TokenGeometryConfig(layers="source", figures=False).analyze(NoBlocks(), kinlm_tokenizer, TEXTS, tmp_path / "e")


def test_padding_never_counts(tmp_path, kinlm_tokenizer):
    """Prompts of different lengths: the result is the mean of each prompt analysed alone, and a
    short prompt's numbers do not move when a long one is analysed with it. The source's padded
    batch (token 0 up to the longest prompt) would have changed them."""
    net, cfg, tok = model(), TokenGeometryConfig(figures=False), kinlm_tokenizer
    short, long = TEXTS[1], TEXTS[2]
    both = cfg.analyze(net, tok, [short, long], tmp_path / "both")
    alone = [cfg.analyze(net, tok, [t], tmp_path / f"a{i}") for i, t in enumerate((short, long))]
    for key in ("pairwise_cosine_per_layer", "intra_similarity_per_layer", "norm_per_layer"):
        np.testing.assert_allclose(both[key], np.mean([a[key] for a in alone], axis=0), rtol=1e-5)
    ids = [tok.encode(short), tok.encode(long)]
    padded = torch.tensor([x + [0] * (len(ids[1]) - len(x)) for x in ids])
    with torch.no_grad():
        hs = net(padded, output_hidden_states=True).hidden_states
    source_style = text_metrics([h[0] for h in hs])["pairwise_cosine"]
    assert max(abs(a - b) for a, b in zip(source_style, alone[0]["pairwise_cosine_per_layer"])) > 1e-2


def test_analyzer_on_a_tiny_random_model(tmp_path, kinlm_tokenizer):
    net = model(n_layer=4)
    cfg = TokenGeometryConfig(gradient_norm=True, heatmap_tokens=12, heatmap_layers=[0, -1])
    m = cfg.analyze(net, kinlm_tokenizer, TEXTS, tmp_path)
    n = 4 + 1                                                # blocks + the embeddings
    assert m["layers"] == n and m["prompts"] == 3
    for key in ("pairwise_cosine_per_layer", "std_pairwise_cosine_per_layer", "intra_similarity_per_layer",
                "anisotropy_per_layer", "norm_per_layer", "update_norm_per_layer", "grad_norm_per_layer"):
        assert len(m[key]) == n, key
    assert m["update_norm_per_layer"][0] is None and all(v > 0 for v in m["update_norm_per_layer"][1:])
    assert all(s >= 0 for s in m["std_pairwise_cosine_per_layer"])
    # the direct computation for the first prompt's gradient at the last layer and its cosines
    ids = torch.tensor([kinlm_tokenizer.encode(TEXTS[0])])
    out = net(ids, output_hidden_states=True)
    loss = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    (g,) = torch.autograd.grad(loss, [out.hidden_states[-1]])
    per_prompt = [text_metrics([h[0] for h in net(torch.tensor([kinlm_tokenizer.encode(t)]),
                                                  output_hidden_states=True).hidden_states]) for t in TEXTS]
    np.testing.assert_allclose(m["pairwise_cosine_per_layer"], np.mean([p["pairwise_cosine"] for p in per_prompt], 0),
                               rtol=1e-5)
    grads = []
    for t in TEXTS:
        x = torch.tensor([kinlm_tokenizer.encode(t)])
        o = net(x, output_hidden_states=True)
        grads.append(torch.autograd.grad(torch.nn.functional.cross_entropy(o.logits[0, :-1], x[0, 1:]),
                                         [o.hidden_states[-1]])[0].norm().item())
    assert grads[0] == pytest.approx(g.norm().item())
    assert m["grad_norm_per_layer"][-1] == pytest.approx(np.mean(grads), rel=1e-5)
    assert not any(p.grad is not None for p in net.parameters())  # the analysis leaves no gradients behind
    # files: metrics.json (stable keys), per-layer plot and CSV, heatmaps at the chosen layers
    # (default: the source's 0, n//4, n//2 and n-1)
    assert heatmap_layers(TokenGeometryConfig(), n) == [0, 1, 2, 4]
    assert heatmap_layers(TokenGeometryConfig(), 13) == [0, 3, 6, 12]
    assert heatmap_layers(TokenGeometryConfig(), 4) == [0, 1, 2, 3]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["pairwise_cosine_per_layer"] == m["pairwise_cosine_per_layer"]
    assert sorted(p.name for p in tmp_path.glob("heatmap_layer_*.png")) == ["heatmap_layer_00.png", "heatmap_layer_04.png"]
    assert (tmp_path / "per_layer.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(tmp_path / "per_layer.csv")))
    assert len(rows) == n and float(rows[2]["pairwise_cosine"]) == pytest.approx(m["pairwise_cosine_per_layer"][2], rel=1e-4)
    assert float(rows[2]["anisotropy"]) == pytest.approx(m["anisotropy_per_layer"][2], rel=1e-4)
    sim = np.load(tmp_path / "similarity.npz")
    assert sim["sim"].shape == (n, 12, 12)
    np.testing.assert_allclose(np.diagonal(sim["sim"], axis1=1, axis2=2), 1.0, atol=1e-5)
    assert list(sim["labels"][:3]) == ["T", "h", "e"]


def test_options_and_errors(tmp_path, kinlm_tokenizer):
    net = model()
    m = TokenGeometryConfig(prompts=["only this prompt here"], heatmap_layers=[-1]).analyze(
        net, kinlm_tokenizer, TEXTS, tmp_path / "p")
    assert m["prompts"] == 1 and [p.name for p in (tmp_path / "p").glob("heatmap_*.png")] == ["heatmap_layer_04.png"]
    assert TokenGeometryConfig(max_prompts=2, figures=False).analyze(net, kinlm_tokenizer, TEXTS, tmp_path / "m")["prompts"] == 2
    assert len(packaged_prompts()) == 87
    with pytest.raises(ValueError, match="layer 9 out of range for 5 hidden states"):
        TokenGeometryConfig(heatmap_layers=[9]).analyze(net, kinlm_tokenizer, TEXTS, tmp_path / "e")
    with pytest.raises(ValueError, match="no prompt with at least 2 tokens"):
        TokenGeometryConfig(figures=False).analyze(net, kinlm_tokenizer, ["a", ""], tmp_path / "e")

    class NoHidden(torch.nn.Module):
        block_size = 16

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

        def forward(self, input_ids, output_hidden_states=False):
            return ModelOutput(logits=torch.zeros(*input_ids.shape, 257))

    with pytest.raises(ValueError, match="needs a model that returns hidden states"):
        TokenGeometryConfig(figures=False).analyze(NoHidden(), kinlm_tokenizer, TEXTS, tmp_path / "e")


@pytest.mark.slow
def test_analyze_many_compares_models(tmp_path, kinlm_tokenizer):
    models = {"LLaMA-PreLN": (model("preln"), kinlm_tokenizer), "LLaMA-PostLN": (model("postln"), kinlm_tokenizer),
              "deep": (model("preln", n_layer=6), kinlm_tokenizer)}
    out = TokenGeometryConfig(heatmap_tokens=8, heatmap_layers=[-1]).analyze_many(models, TEXTS, tmp_path)
    assert {p.name for p in tmp_path.glob("compare_*.png")} == {
        f"compare_{k}.png" for k in ("pairwise_cosine", "intra_similarity", "anisotropy", "norm", "update_norm")}
    assert (tmp_path / "diff_heatmap_LLaMA-PreLN_minus_LLaMA-PostLN.png").stat().st_size > 1000
    per = {n: json.loads((tmp_path / n / "metrics.json").read_text()) for n in models}
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert len(rows) == 7                                    # the deepest model's 6 blocks + embeddings
    for i in range(5):
        a, b = per["LLaMA-PreLN"]["pairwise_cosine_per_layer"][i], per["LLaMA-PostLN"]["pairwise_cosine_per_layer"][i]
        assert float(rows[i]["LLaMA-PreLN-LLaMA-PostLN:pairwise_cosine"]) == pytest.approx(a - b, abs=1e-5)
    assert rows[6]["LLaMA-PreLN:pairwise_cosine"] == "" and rows[6]["deep:pairwise_cosine"] != ""
    assert out["LLaMA-PreLN-LLaMA-PostLN/pairwise_cosine_last"] == pytest.approx(
        per["LLaMA-PreLN"]["pairwise_cosine_last"] - per["LLaMA-PostLN"]["pairwise_cosine_last"])
    assert out["deep/layers"] == 7
    # explicit pairs; a name that is not there is one clear error
    out = TokenGeometryConfig(differences=[("deep", "LLaMA-PostLN")], figures=False).analyze_many(
        {k: models[k] for k in ("deep", "LLaMA-PostLN")}, TEXTS, tmp_path / "x")
    assert "deep-LLaMA-PostLN/pairwise_cosine_last" in out and not list((tmp_path / "x").glob("*.png"))
    with pytest.raises(ValueError, match="no model named 'nope'; models: LLaMA-PreLN, LLaMA-PostLN, deep"):
        TokenGeometryConfig(differences=[("nope", "deep")], figures=False).analyze_many(models, TEXTS, tmp_path / "y")


def test_evolution_figures_in_a_run_folder(tmp_path, kinlm_tokenizer):
    """Analyses at step 0 and step 100 of a run (two different weights stand in for training):
    the later one also writes the before/after figures and the change of the last-layer cosine."""
    root = tmp_path / "analysis" / "token_geometry"
    cfg = TokenGeometryConfig(heatmap_layers=[0], heatmap_tokens=8)
    first = cfg.analyze(model(seed=0), kinlm_tokenizer, TEXTS, root / "step_0000000")
    assert not (root / "step_0000000" / "evolution.png").exists()
    last = cfg.analyze(model(seed=1), kinlm_tokenizer, TEXTS, root / "step_0000100")
    for name in ("evolution.png", "evolution_heatmaps.png"):
        assert (root / "step_0000100" / name).stat().st_size > 1000
    assert last["pairwise_cosine_last_change"] == pytest.approx(last["pairwise_cosine_last"] - first["pairwise_cosine_last"])
    TokenGeometryConfig(evolution=False, figures=False).analyze(model(seed=2), kinlm_tokenizer, TEXTS, root / "step_0000200")
    assert not (root / "step_0000200" / "evolution.png").exists()
