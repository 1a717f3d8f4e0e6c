"""The `hybrid_tasks` objective at run time: documents -> seq2seq task rows -> a padded batch.

collate(documents, rng): each document's tokens are decoded to text, the tasks of
kinlm_vt_t5/tasks.py are made from it (randomness from ``rng`` only), filtered by level and
general share, encoded (sentinels = the tokenizer's sentinel ids), cut to the length caps and
padded by the core's ``objectives.seq2seq_batch`` (the batch span_corruption makes), plus the
task domains; the loss is the core's ``seq2seq_loss``, the task mix its ``LossResult.metrics``:

    input_ids (B, T)  attention_mask (B, T)          source tokens + EOS, padded with the pad id
    labels (B, T')    decoder_attention_mask (B, T') target tokens + EOS, -100 on padding
    decoder_input_ids (B, T')                        labels shifted right, starting with the pad id (T5)
    target_bytes ()                                  UTF-8 bytes of the scored target tokens
    task_domain (B,)                                 index into tasks.DOMAINS (logged per step)

bind_data(data) scores every training document once and cuts each domain into levels.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from kinlm_core import IGNORE_INDEX, Objective, component
from kinlm_core.objectives import pad_id_of, seq2seq_batch, seq2seq_loss

from .tasks import DOMAINS, LEVELLED, Task, can_make, complexity, level_cuts, level_of, make_tasks, unlocked_level


class HybridTasks(Objective):
    def __init__(self, cfg, tokenizer):
        if not tokenizer.sentinel_ids:
            raise ValueError("hybrid_tasks needs a tokenizer with sentinel ids (extend_tokenizer adds them)")
        self.cfg, self.tok = cfg, tokenizer
        self.sentinels = [int(i) for i in tokenizer.sentinel_ids]
        self.pad, self.eos = pad_id_of(tokenizer), tokenizer.eos_id
        self.special = {int(i) for i in (tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id) if i is not None}
        self.special |= set(self.sentinels)
        self.nbytes = np.asarray(tokenizer.token_bytes(), dtype=np.float64)
        self.cuts: dict[str, list[float]] | None = None
        self.general_p = cfg.general_share if isinstance(cfg.general_share, float) else None
        self.counts: dict[str, int] = {}
        self.core = None
        if cfg.general == "t5_tokens":
            sc = component("objective", "span_corruption")(noise_density=cfg.noise_density,
                                                             mean_span_length=cfg.mean_span_length,
                                                             n_sentinels=cfg.n_sentinels)
            self.core = sc.build(tokenizer)

    # --- data ----------------------------------------------------------------------------------
    def text_of(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids if int(i) not in self.special])

    def bind_data(self, data) -> None:
        """Score the training documents: level thresholds per domain, task counts per domain."""
        cfg, scores, counts = self.cfg, {d: [] for d in LEVELLED}, Counter()
        for doc in data.documents("train"):
            text = self.text_of(doc)
            ok = can_make(text, cfg.min_chars)
            if not any(ok.values()):
                continue
            c = complexity(text)
            for d in DOMAINS:
                if ok[d] and d in cfg.tasks:
                    counts[d] += 1
                    if d in scores:
                        scores[d].append(c[d])
        self.set_levels({d: level_cuts(s, cfg.levels[d]) for d, s in scores.items()}, dict(counts))

    def set_levels(self, cuts: dict[str, list[float]], counts: dict[str, int]) -> None:
        self.cuts, self.counts = cuts, counts
        if self.cfg.general_share == "dataset_quarter":  # the source: len(task set) // 4 general tasks
            self.general_p = min(1.0, (sum(counts.values()) // 4) / max(counts.get("general", 0), 1))

    def tasks_of(self, text: str, rng: np.random.Generator) -> list[Task]:
        """The document's kept tasks for this objective's progress and general share."""
        cfg = self.cfg
        domains = [d for d in cfg.tasks if not (d == "general" and self.core is not None)]
        tasks = make_tasks(text, rng, domains=domains, min_chars=cfg.min_chars, density=cfg.noise_density,
                           lengths=tuple(cfg.span_lengths), count=cfg.span_count, max_spans=len(self.sentinels))
        if cfg.progress is not None or self.general_p is None:
            if self.cuts is None:
                raise ValueError("hybrid_tasks: levels and shares need bind_data(data) before collate "
                                 "(the engine calls it; in a test call objective.bind_data(data) first)")
        scores = complexity(text) if cfg.progress is not None else None
        kept = []
        for t in tasks:
            if t.domain == "general":
                if self.general_p < 1.0 and rng.random() >= self.general_p:
                    continue
            elif scores is not None:
                n = cfg.levels[t.domain]
                if level_of(scores[t.domain], self.cuts[t.domain]) > unlocked_level(cfg.progress, n):
                    continue
            kept.append(t)
        return kept

    def encode(self, parts: list, cap: int) -> np.ndarray:
        ids: list[int] = []
        for p in parts:
            ids += [self.sentinels[p]] if isinstance(p, int) else self.tok.encode(p)
        ids = ids[:cap - 1] if self.eos is not None else ids[:cap]
        return np.asarray(ids + ([self.eos] if self.eos is not None else []), dtype=np.int64)

    def rows_of(self, doc, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """(source ids, target ids, domain index) of each task row of one document."""
        cfg, text = self.cfg, self.text_of(doc)
        rows = []
        for t in self.tasks_of(text, rng):
            src = self.encode(t.source, cfg.max_source_tokens)
            target = t.target
            if t.domain == "general":  # a cut input keeps only some sentinels: keep only their spans
                kept = int(np.isin(src, self.sentinels).sum())
                target = target[:2 * kept]
                if not kept:
                    continue
            rows.append((src, self.encode(target, cfg.max_target_tokens), DOMAINS.index(t.domain)))
        if self.core is not None and "general" in cfg.tasks and len(text.strip()) > cfg.min_chars:
            keep = self.general_p >= 1.0 or rng.random() < self.general_p
            ids = np.asarray([i for i in doc if int(i) not in self.special], dtype=np.int64)[:cfg.max_source_tokens - 1]
            if keep and len(ids) >= 2:
                src, tgt, _ = self.core.corrupt(ids, rng)
                rows.insert(0, (src, tgt[:cfg.max_target_tokens], 0))
        if cfg.per_document == "one" and len(rows) > 1:
            rows = [rows[int(rng.integers(len(rows)))]]
        return rows

    # --- the contract --------------------------------------------------------------------------
    def collate(self, examples, rng) -> dict:
        rng = rng if rng is not None else np.random.default_rng(0)
        rows = [r for doc in examples for r in self.rows_of(doc, rng)]
        if not rows:  # no document had a kept task: one row that scores nothing
            b = seq2seq_batch([np.asarray([self.pad], np.int64)], [np.asarray([self.pad], np.int64)], self.pad, 0.0)
            b["labels"].fill_(IGNORE_INDEX)
            b["task_domain"] = torch.zeros(1, dtype=torch.long)
            return b
        scored_ids = [int(i) for r in rows for i in r[1] if int(i) not in self.special]
        b = seq2seq_batch([r[0] for r in rows], [r[1] for r in rows], self.pad, self.nbytes[scored_ids].sum())
        b["task_domain"] = torch.tensor([r[2] for r in rows], dtype=torch.long)
        return b

    def loss(self, model, batch: dict, output_hidden_states: bool = False):
        r = seq2seq_loss(model, batch, output_hidden_states, "hybrid_tasks")
        r.metrics = self.domain_metrics(r.output.logits, batch)
        return r

    @staticmethod
    def domain_metrics(logits, batch) -> dict:
        """Per-step task rows, mix and per-domain loss, logged as metrics/rows, metrics/task_<domain> (share of
        the rows) and metrics/loss_<domain> (mean over that domain's target tokens)."""
        labels, dom = batch["labels"], batch["task_domain"]
        with torch.no_grad():
            nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                  reduction="none").sum(1)                          # (B,)
            n = (labels != IGNORE_INDEX).sum(1)                                      # (B,)
            m = {"rows": (n > 0).sum().float()}
            for i, d in enumerate(DOMAINS):
                sel = (dom == i) & (n > 0)
                m[f"task_{d}"] = sel.float().mean()
                if sel.any():
                    m[f"loss_{d}"] = nll[sel].sum() / n[sel].sum()
        return m
