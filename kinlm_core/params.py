"""Parameter counts of a model, once for everything that needs them (``kinlm params``, claims,
diagnostics): every tensor by name with its shape, the tensors that are tied (one tensor under
several names, e.g. gpt's ``head.weight`` is ``wte.weight``), and the totals.

- **Names** are ``model.named_parameters()`` names, the names a curriculum's ``trainable`` prefixes
  match (``name.startswith(prefix)``). A tied tensor is listed once, under its first name; freezing
  that name freezes every module that uses it.
- **Embedding parameters** are the weights of the model's ``nn.Embedding`` modules (token and
  position embeddings) plus any the model names in ``embedding_param_names()`` (embeddings kept as
  a bare ``nn.Parameter``). A head tied to the token embedding is that embedding: it is not
  counted twice. **Non-embedding** = total - embedding, as in Kaplan et al. (2020).

Torch is only needed by the caller (the model); this module imports nothing heavy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    count: int
    embedding: bool
    trainable: bool
    tied: list[str] = field(default_factory=list)  # the other names of this tensor


@dataclass
class ParamCounts:
    tensors: list[Tensor]
    total: int
    embedding: int
    non_embedding: int
    trainable: int

    @property
    def tied(self) -> list[tuple[str, list[str]]]:
        """(name, the other names of the same tensor) for every tied tensor."""
        return [(t.name, t.tied) for t in self.tensors if t.tied]

    def as_dict(self) -> dict:
        return {"total": self.total, "embedding": self.embedding, "non_embedding": self.non_embedding,
                "trainable": self.trainable,
                "tensors": [{"name": t.name, "shape": list(t.shape), "count": t.count, "embedding": t.embedding,
                             "trainable": t.trainable, "tied": t.tied} for t in self.tensors]}


def count_parameters(model) -> ParamCounts:
    """Every distinct parameter tensor of ``model`` (see the module docstring)."""
    import torch.nn as nn

    emb_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    extra = set(model.embedding_param_names()) if hasattr(model, "embedding_param_names") else set()
    first: dict[int, Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        t = first.get(id(p))
        if t is not None:
            t.tied.append(name)
            continue
        first[id(p)] = Tensor(name, tuple(p.shape), p.numel(), id(p) in emb_ids or name in extra, p.requires_grad)
    tensors = list(first.values())
    total = sum(t.count for t in tensors)
    emb = sum(t.count for t in tensors if t.embedding)
    return ParamCounts(tensors, total, emb, total - emb, sum(t.count for t in tensors if t.trainable))


def non_embedding_parameters(model) -> int:
    """Total parameters less the embeddings (see :func:`count_parameters`)."""
    return count_parameters(model).non_embedding


def groups(counts: ParamCounts) -> list[dict]:
    """Tensors of repeated layers folded into one row: ``blocks.{0-3}.attn.qkv.weight`` with its
    shape, the number of tensors and their parameters together (rows in model order)."""
    rows: dict[tuple, dict] = {}
    for t in counts.tensors:
        key = (re.sub(r"\.\d+\.", ".#.", f".{t.name}.")[1:-1], t.shape, t.embedding, t.trainable, bool(t.tied))
        row = rows.setdefault(key, {"pattern": key[0], "shape": t.shape, "tensors": 0, "count": 0,
                                    "indices": [], "embedding": t.embedding, "trainable": t.trainable,
                                    "tied": list(t.tied)})
        row["tensors"] += 1
        row["count"] += t.count
        row["indices"] += re.findall(r"\.(\d+)(?=\.)", f".{t.name}.")[:1]
    out = []
    for r in rows.values():
        idx = sorted({int(i) for i in r["indices"]})
        if "#" in r["pattern"] and idx:
            if len(idx) == 1:
                span = str(idx[0])
            elif idx == list(range(idx[0], idx[-1] + 1)):
                span = f"{{{idx[0]}-{idx[-1]}}}"
            else:
                span = "{" + ",".join(map(str, idx)) + "}"
            r["name"] = r["pattern"].replace("#", span, 1).replace("#", "*")
        else:
            r["name"] = r["pattern"].replace("#", "*")
        out.append(r)
    return out


def prefixes(counts: ParamCounts) -> list[str]:
    """The top-level names (the first dotted part), in model order: the coarsest ``trainable`` prefixes."""
    seen: list[str] = []
    for t in counts.tensors:
        top = t.name.split(".")[0]
        if top not in seen:
            seen.append(top)
    return seen


def table(counts: ParamCounts) -> str:
    """A markdown table of :func:`groups`, then the totals and the tied tensors."""
    lines = ["| parameters | shape | tensors | count | note |", "|---|---|---:|---:|---|"]
    for g in groups(counts):
        notes = (["embedding"] if g["embedding"] else []) + ([] if g["trainable"] else ["frozen"])
        if g["tied"]:
            notes.append("tied: also " + ", ".join(g["tied"]))
        lines.append(f"| {g['name']} | ({', '.join(map(str, g['shape']))}) | {g['tensors']} | {g['count']:,} | "
                     f"{'; '.join(notes)} |")
    lines += ["", f"total {counts.total:,}; embedding {counts.embedding:,}; non-embedding {counts.non_embedding:,}"
              + (f"; trainable {counts.trainable:,}" if counts.trainable != counts.total else "")]
    for name, others in counts.tied:
        owner = name.rsplit(".", 1)[0]
        lines.append(f"tied: {', '.join(others)} is {name} (one tensor): a phase that freezes '{owner}' freezes "
                     f"{', '.join(others)} too")
    lines.append("trainable prefixes match these names from the start, e.g. " + ", ".join(
        f"'{p}'" for p in prefixes(counts)))
    return "\n".join(lines) + "\n"
