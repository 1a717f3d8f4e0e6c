"""BLiMP, built in: 67 paradigms of 1,000 English minimal pairs (Warstadt et al. 2020, CC BY 4.0; the
files are shipped in ``kinlm_core/data/blimp``, see ATTRIBUTION.md there).

A pair is correct when the model gives the grammatical sentence at least the total log-probability of
the ungrammatical one. Each sentence is scored as lm-evaluation-harness's ``blimp`` task scores it, so
the numbers agree with that harness on the same model:

    decoder-only   context = [eos]              continuation = encode(" " + sentence) = (c_1 .. c_n)
                   log p(sentence) = sum_i log softmax(logits[i])[c_i],  logits (B, 1 + n - 1, V)
                   longer than the model's block_size: the oldest tokens are dropped, as the harness does
    seq2seq (T5)   encoder input = [sentinel_0, eos]   (the whole sentence is the one masked span;
                   "empty" input: [eos])
                   decoder labels = [sentinel_0, c_1 .. c_n], decoder input = [pad] + labels[:-1]
                   log p(sentence) = the sum over c_1 .. c_n only (sentinel_0 is context)

Ties count as correct, as in the harness (its argmax picks the first choice, the grammatical one); the
result says how many pairs tied. Accuracy is reported overall, per field (morphology, syntax,
semantics, syntax_semantics; the source spells one paradigm's field "syntax/semantics") and per
paradigm. Sentences are sorted by length and batched by a token budget.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from .api import FIGURE_DPI

DATA = Path(__file__).parent / "data" / "blimp"

FIELDS = ("morphology", "syntax", "semantics", "syntax_semantics")

_BY_FIELD = {
    "morphology": (
        "anaphor_gender_agreement", "anaphor_number_agreement", "determiner_noun_agreement_1",
        "determiner_noun_agreement_2", "determiner_noun_agreement_irregular_1",
        "determiner_noun_agreement_irregular_2", "determiner_noun_agreement_with_adj_2",
        "determiner_noun_agreement_with_adj_irregular_1", "determiner_noun_agreement_with_adj_irregular_2",
        "determiner_noun_agreement_with_adjective_1", "distractor_agreement_relational_noun",
        "distractor_agreement_relative_clause", "irregular_past_participle_adjectives",
        "irregular_past_participle_verbs", "irregular_plural_subject_verb_agreement_1",
        "irregular_plural_subject_verb_agreement_2", "regular_plural_subject_verb_agreement_1",
        "regular_plural_subject_verb_agreement_2",
    ),
    "syntax": (
        "adjunct_island", "animate_subject_passive", "animate_subject_trans", "causative", "complex_NP_island",
        "coordinate_structure_constraint_complex_left_branch",
        "coordinate_structure_constraint_object_extraction", "drop_argument", "ellipsis_n_bar_1",
        "ellipsis_n_bar_2", "inchoative", "intransitive", "left_branch_island_echo_question",
        "left_branch_island_simple_question", "passive_1", "passive_2", "sentential_subject_island",
        "transitive", "wh_island", "wh_questions_object_gap", "wh_questions_subject_gap",
        "wh_questions_subject_gap_long_distance", "wh_vs_that_no_gap", "wh_vs_that_no_gap_long_distance",
        "wh_vs_that_with_gap", "wh_vs_that_with_gap_long_distance",
    ),
    "semantics": (
        "existential_there_quantifiers_1", "existential_there_quantifiers_2",
        "matrix_question_npi_licensor_present", "npi_present_1", "npi_present_2", "only_npi_licensor_present",
        "sentential_negation_npi_licensor_present", "superlative_quantifiers_1", "superlative_quantifiers_2",
    ),
    "syntax_semantics": (
        "existential_there_object_raising", "existential_there_subject_raising", "expletive_it_object_raising",
        "only_npi_scope", "principle_A_c_command", "principle_A_case_1", "principle_A_case_2",
        "principle_A_domain_1", "principle_A_domain_2", "principle_A_domain_3", "principle_A_reconstruction",
        "sentential_negation_npi_scope", "tough_vs_raising_1", "tough_vs_raising_2",
    ),
}
PARADIGMS: dict[str, str] = {p: f for f, ps in _BY_FIELD.items() for p in ps}  # paradigm -> field


def unknown_paradigms(names) -> list[str]:
    """Messages for names that are not BLiMP paradigms, each with the closest match."""
    import difflib

    out = []
    for n in names:
        if n not in PARADIGMS:
            near = difflib.get_close_matches(n, list(PARADIGMS), n=1)
            out.append(f"unknown BLiMP paradigm {n!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    return out


def load_pairs(paradigms=None, max_pairs: int | None = None) -> list[dict]:
    """The pairs of ``paradigms`` (default: all 67, in alphabetical order), the first ``max_pairs`` of
    each (default: all 1,000): dicts with good, bad, paradigm, field."""
    names = sorted(PARADIGMS) if not paradigms else list(paradigms)
    bad = unknown_paradigms(names)
    if bad:
        raise ValueError("; ".join(bad))
    pairs = []
    for name in names:
        with gzip.open(DATA / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if max_pairs is not None and i >= max_pairs:
                    break
                r = json.loads(line)
                pairs.append({"good": r["sentence_good"], "bad": r["sentence_bad"], "paradigm": name,
                              "field": PARADIGMS[name]})
    return pairs


def _is_seq2seq(model) -> bool:
    from .objectives import model_inputs

    return "decoder_input_ids" in model_inputs(model, {"decoder_input_ids": None})


def _rows(model, tokenizer, sentences, seq2seq_input: str) -> tuple[list, bool, int]:
    """Per sentence, what the model is fed and which targets are scored:
    decoder-only (tokens, n_scored): the scored targets are the last n_scored of tokens[1:];
    seq2seq (encoder ids, labels, n_scored): the scored labels are the last n_scored."""
    conts = tokenizer.encode_batch([" " + s for s in sentences])
    if _is_seq2seq(model):
        if seq2seq_input == "sentinel" and not tokenizer.sentinel_ids:
            raise ValueError("BLiMP on a seq2seq model with seq2seq_input='sentinel' needs a tokenizer with "
                             "sentinel ids (a T5 run's objective adds them); or use seq2seq_input='empty'")
        end = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        if seq2seq_input == "sentinel":
            s0 = int(tokenizer.sentinel_ids[0])
            return [([s0, *end], [s0, *c], len(c)) for c in conts], True, 0
        return [(end, list(c), len(c)) for c in conts], True, 0
    ctx = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
    if ctx is None:
        raise ValueError("BLiMP scores a sentence after the end-of-text token: this tokenizer has no eos or bos id")
    block = getattr(model, "block_size", None)
    rows, truncated = [], 0
    for c in conts:
        toks = [int(ctx), *c]
        if block is not None and len(toks) > block + 1:  # the harness keeps the last block_size + 1 tokens
            toks, truncated = toks[-(block + 1):], truncated + 1
        rows.append((toks, min(len(c), len(toks) - 1)))
    return rows, False, truncated


def sentence_logprobs(model, tokenizer, sentences: list[str], batch_tokens: int = 8192,
                      seq2seq_input: str = "sentinel", progress: bool | None = None) -> tuple[list[float], int]:
    """Total log-probability (nats) of each sentence as a continuation of end-of-text (see the module
    docstring), and how many sentences were cut to the model's block_size."""
    import torch
    from tqdm import tqdm

    from .objectives import call_model, pad_id_of, pad_rows

    rows, seq2seq, truncated = _rows(model, tokenizer, sentences, seq2seq_input)
    pad = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    length = (lambda r: len(r[0]) + len(r[1])) if seq2seq else (lambda r: len(r[0]))
    order = sorted(range(len(rows)), key=lambda i: length(rows[i]))
    batches, cur, longest = [], [], 0
    for i in order:  # sorted by length, so each batch is padded to about its own length
        longest = max(longest, length(rows[i]))
        if cur and longest * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur, longest = [], length(rows[i])
        cur.append(i)
    if cur:
        batches.append(cur)
    out = [0.0] * len(rows)
    was = model.training
    model.eval()
    with torch.no_grad():
        for idx in tqdm(batches, desc="BLiMP", unit="batch", leave=False,
                        disable=None if progress is None else not progress):  # None: when stderr is a terminal
            if seq2seq:
                enc, mask = pad_rows([rows[i][0] for i in idx], pad)
                labels, dmask = pad_rows([rows[i][1] for i in idx], pad)
                dec = torch.full_like(labels, pad)
                dec[:, 1:] = labels[:, :-1]
                batch = {"input_ids": enc, "attention_mask": mask, "decoder_input_ids": dec,
                         "decoder_attention_mask": dmask}
                targets, lens, n_scored = labels, dmask.sum(1), [rows[i][2] for i in idx]
            else:
                ids, mask = pad_rows([rows[i][0] for i in idx], pad)
                batch = {"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1]}
                targets, lens, n_scored = ids[:, 1:], mask[:, 1:].sum(1), [rows[i][1] for i in idx]
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = call_model(model, batch).logits[..., :tokenizer.vocab_size].float()  # not a padded vocab's rows
            logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1).cpu()
            pos = torch.arange(targets.size(1))
            lens = lens.cpu()
            first = lens - torch.tensor(n_scored)
            scored = (pos[None, :] >= first[:, None]) & (pos[None, :] < lens[:, None])
            for i, total in zip(idx, logp.masked_fill(~scored, 0.0).sum(1).tolist()):
                out[i] = total
    model.train(was)
    return out, truncated


def score(model, tokenizer, paradigms=None, max_pairs: int | None = None, batch_tokens: int = 8192,
          seq2seq_input: str = "sentinel", progress: bool | None = None) -> dict:
    """Accuracy overall, per field and per paradigm (keys "overall", the field names, the paradigm
    names), with "pairs", "ties" and "truncated" (sentences cut to the model's block_size)."""
    pairs = load_pairs(paradigms, max_pairs)
    sentences = [s for p in pairs for s in (p["good"], p["bad"])]
    lp, truncated = sentence_logprobs(model, tokenizer, sentences, batch_tokens, seq2seq_input, progress)
    hits: dict[str, list[int]] = {}
    ties = 0
    for k, p in enumerate(pairs):
        good, bad = lp[2 * k], lp[2 * k + 1]
        ties += good == bad
        for key in ("overall", p["field"], p["paradigm"]):
            hits.setdefault(key, []).append(int(good >= bad))
    acc = {k: sum(v) / len(v) for k, v in hits.items()}
    ordered = {"overall": acc["overall"], **{f: acc[f] for f in FIELDS if f in acc},
               **{p: acc[p] for p in sorted(PARADIGMS) if p in acc}}
    return {**ordered, "pairs": len(pairs), "ties": ties, "truncated": truncated}


def plot(metrics: dict, path: Path, title: str = "BLiMP") -> None:
    """Accuracy per paradigm as horizontal bars grouped and coloured by field, each field's mean as a
    dashed line, chance (0.5) as a grey line; the legend sits right of the bars (it covers none) and
    the figure grows to every paradigm's whole name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p for f in FIELDS for p in _BY_FIELD[f] if p in metrics]
    colours = dict(zip(FIELDS, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.18 * len(names)))
    y = list(range(len(names)))[::-1]
    ax.barh(y, [metrics[p] for p in names], color=[colours[PARADIGMS[p]] for p in names], height=0.8)
    for f in FIELDS:
        ys = [yy for yy, p in zip(y, names) if PARADIGMS[p] == f]
        if ys and f in metrics:
            ax.plot([metrics[f]] * 2, [min(ys) - 0.4, max(ys) + 0.4], "--", color=colours[f],
                    label=f"{f}: {metrics[f]:.3f}")
    ax.axvline(0.5, color="grey", lw=1, label="chance: 0.5")
    ax.set_yticks(y, names, fontsize=6)
    ax.set(xlim=(0, 1), xlabel="accuracy (grammatical sentence more likely)",
           title=f"{title}: overall {metrics['overall']:.3f} on {metrics['pairs']} pairs")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
