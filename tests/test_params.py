"""kinlm_core.params: counts by hand on a small module with a tied head, a bare-parameter
embedding named by the model, a frozen tensor and repeated layers folded into one row."""

import torch.nn as nn

from kinlm_core.params import count_parameters, groups, non_embedding_parameters, table


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(10, 4)                       # 40, embedding
        self.extra = nn.Parameter(nn.init.zeros_(nn.Linear(4, 3).weight))  # 12, an embedding by name
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))    # 3 x (16 + 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.tok.weight                  # tied: not counted again
        self.layers[2].bias.requires_grad_(False)

    def embedding_param_names(self):
        return ["extra"]


def test_counts_ties_embeddings_and_groups_by_hand():
    c = count_parameters(Small())
    assert (c.total, c.embedding, c.non_embedding, c.trainable) == (40 + 12 + 60, 52, 60, 112 - 4)
    assert non_embedding_parameters(Small()) == 60
    assert c.tied == [("tok.weight", ["head.weight"])]
    rows = {g["name"]: (g["shape"], g["tensors"], g["count"]) for g in groups(c)}
    assert rows == {"tok.weight": ((10, 4), 1, 40), "extra": ((3, 4), 1, 12), "layers.{0-2}.weight": ((4, 4), 3, 48),
                    "layers.{0-1}.bias": ((4,), 2, 8), "layers.2.bias": ((4,), 1, 4)}
    text = table(c)
    assert "| layers.2.bias | (4) | 1 | 4 | frozen |" in text
    assert "total 112; embedding 52; non-embedding 60; trainable 108" in text
    assert "tied: head.weight is tok.weight (one tensor): a phase that freezes 'tok' freezes head.weight too" in text
