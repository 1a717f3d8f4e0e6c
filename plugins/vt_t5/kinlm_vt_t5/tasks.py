"""The hybrid curriculum's per-document seq2seq tasks and the heuristic complexity score (pure
Python + numpy; no torch).

A document (more than ``min_chars`` characters) yields up to four tasks, each a (source, target)
pair of parts; a part is text, or an int = the index of a sentinel ``<extra_id_i>``:

    general        span corruption over words: ~15% of the words in spans of 1, 2 or 3 words
                   (uniform), each span replaced by one sentinel; the target lists sentinel + span
    morphological  "inflect {word} with {suffix}:"  ->  word + suffix     (suffix in ing, ed, er, s)
    syntactic      "complete sentence: {prefix}"    ->  the rest of a sentence cut at a random word
    semantic       "continue logically: {s_0}"      ->  s_1 (the document's next sentence)

Complexity (each score clamped to [0.01, 1]; the formulas of the source's analyzer, rewritten):

    morphology = mean over words of min(1, length bonus + suffix bonus per suffix class + prefix bonus)
    syntax     = sum over 5 patterns (subordinators, relatives, passives, complex tenses, discourse
                 markers) of 2 * matches / words + 0.5 * std/(mean+1) of sentence lengths
                 + 0.3 * clamp((words per sentence - 10) / 20, 0, 1)
    semantics  = 0.4 * type-token ratio + 0.4 * min(1, 3 * rare share) + 0.2 * min(1, 5 * abstract share)
    lexical    = mean over words of min(1, 0.7 if rare + length bonus)
    overall    = 0.25 morphology + 0.35 syntax + 0.25 semantics + 0.15 lexical

"rare" = not in a short list of very frequent English words (the source's list is 65 words long and
its frequency ranks never pass its thresholds, so in effect "known word" scores 0 and "rare" 0.7).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

DOMAINS = ("general", "morphological", "syntactic", "semantic")
LEVELLED = ("morphological", "syntactic", "semantic")
DEFAULT_LEVELS = {"morphological": 3, "syntactic": 4, "semantic": 5}

WORD = re.compile(r"\b\w+\b")
SENTENCE_END = re.compile(r"[.!?]+")             # complexity: sentences are runs between . ! ?
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")    # tasks: sentences end with . ! ? and a space
SYNTAX_PATTERNS = [
    re.compile(r"\b(?:although|because|since|while|if|when|after|before|until|unless|whereas)\b", re.I),
    re.compile(r"\b(?:which|that|who|whom|whose|where)\s+\w+", re.I),
    re.compile(r"\b(?:was|were|is|are|been)\s+\w+ed\b", re.I),
    re.compile(r"\b(?:have|has|had|will|would|could|should|might|must)\s+(?:been|have)\b", re.I),
    re.compile(r"\b(?:however|therefore|furthermore|moreover|nevertheless|consequently)\b", re.I),
]
SUFFIXES = {  # class -> (suffixes, bonus); one match per class counts
    "derivational": (("tion", "sion", "ment", "ness", "ity", "ism", "ance", "ence"), 0.4),
    "inflectional": (("ing", "ed", "er", "est", "s", "es"), 0.2),
    "academic": (("ological", "istically", "ification"), 0.6),
}
PREFIXES = ("un", "re", "pre", "dis", "in", "im", "non", "over", "under", "mis", "anti", "inter", "multi")
ABSTRACT = frozenset({"concept", "idea", "theory", "principle", "notion", "aspect", "factor", "element"})
FREQUENT = frozenset("""
the a an and or but in on at to for of with by is are was were be been being have has had do does did
will would can could should may might i you he she it we they this that these those time person year way
day thing man world life hand part child eye woman place work week case point
""".split())
INFLECTIONS = ("ing", "ed", "er", "s")


def _clamp(x: float) -> float:
    return max(0.01, min(float(x), 1.0))


def complexity(text: str) -> dict[str, float]:
    """The heuristic scores of a text: morphological, syntactic, semantic, lexical, overall (each in [0.01, 1])."""
    words = WORD.findall(text.lower())
    sentences = [s for s in (p.strip() for p in SENTENCE_END.split(text)) if s]
    if len(text.strip()) < 10 or not words or not sentences:
        return dict.fromkeys(("morphological", "syntactic", "semantic", "lexical", "overall"), 0.1)
    n = len(words)
    morph = 0.0
    for w in words:
        s = 0.3 if len(w) > 8 else 0.15 if len(w) > 6 else 0.0
        for suffixes, bonus in SUFFIXES.values():
            if any(w.endswith(x) and len(w) > len(x) + 2 for x in suffixes):
                s += bonus
        if any(w.startswith(p) and len(w) > len(p) + 2 for p in PREFIXES):
            s += 0.2
        morph += min(s, 1.0)
    morph /= n
    syntax = sum(len(p.findall(text)) for p in SYNTAX_PATTERNS) / n * 2
    if len(sentences) > 1:
        lengths = np.array([len(s.split()) for s in sentences], dtype=float)
        syntax += lengths.std() / (lengths.mean() + 1) * 0.5
    syntax += max(min((n / len(sentences) - 10) / 20, 1.0), 0.0) * 0.3
    rare = sum(w not in FREQUENT for w in words) / n
    semantic = 0.4 * len(set(words)) / n + 0.4 * min(rare * 3, 1.0) + 0.2 * min(sum(w in ABSTRACT for w in words) / n * 5, 1.0)
    lexical = sum(min((0.7 if w not in FREQUENT else 0.0) + (0.3 if len(w) > 10 else 0.15 if len(w) > 7 else 0.0), 1.0)
                  for w in words) / n
    overall = 0.25 * morph + 0.35 * syntax + 0.25 * semantic + 0.15 * lexical
    return {"morphological": _clamp(morph), "syntactic": _clamp(syntax), "semantic": _clamp(semantic),
            "lexical": _clamp(lexical), "overall": _clamp(overall)}


# --- tasks -----------------------------------------------------------------------------------------


@dataclass
class Task:
    """One seq2seq example: ``source``/``target`` are lists of parts (str text, or int sentinel index)."""

    domain: str
    source: list = field(default_factory=list)
    target: list = field(default_factory=list)

    def target_text(self) -> str:
        """The target's text (sentinels left out): what bits per byte is measured over."""
        return "".join(p for p in self.target if isinstance(p, str))


def sentences_of(text: str) -> list[str]:
    """Sentences of 5 to 40 words (cut after . ! ? followed by whitespace)."""
    out = [s.strip() for s in SENTENCE_BREAK.split(text) if s.strip()]
    return [s for s in out if 5 <= len(s.split()) <= 40]


def span_lengths_for(n_words: int, density: float, lengths: tuple[int, ...], count: str,
                     rng: np.random.Generator) -> list[int]:
    """Span lengths drawn uniformly from ``lengths``: until about density * n_words words are covered
    (count="words"), or int(density * n_words) spans (count="spans", the source's count: ~30% of the
    words for lengths 1..3). Capped so that spans never touch (at least one kept word between two)."""
    if count == "spans":
        k = max(1, int(n_words * density))
        out = [int(x) for x in rng.choice(lengths, size=k)]
    else:
        goal, out = max(1, int(round(n_words * density))), []
        while sum(out) < goal:
            out.append(int(rng.choice(lengths)))
    while out and sum(out) + len(out) - 1 > n_words - 1:  # keep >= 1 word, and a gap between spans
        out.pop()
    return out or [1]


def word_span_corruption(text: str, rng: np.random.Generator, density: float = 0.15,
                         lengths: tuple[int, ...] = (1, 2, 3), count: str = "words",
                         max_spans: int = 100) -> Task | None:
    """Span corruption over whitespace-separated words; spans never overlap or touch, so no word is
    masked twice. A span's text includes the whitespace before it, so source + spans = the text."""
    bounds = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    n = len(bounds)
    if n < 10:
        return None
    spans = span_lengths_for(n, density, lengths, count, rng)[:max_spans]
    # gaps g_0 >= 0, g_1..g_{k-1} >= 1, g_k >= 0 of kept words, uniformly (stars and bars)
    k, kept = len(spans), n - sum(spans)
    free = kept - (k - 1)
    bars = np.sort(rng.choice(free + k, size=k, replace=False))
    gaps = np.diff(np.concatenate([[-1], bars, [free + k]])) - 1
    gaps[1:k] += 1
    source, target, w, c = [], [], 0, 0   # w: next word index, c: next char offset
    for i, (g, L) in enumerate(zip(gaps[:k], spans)):
        w += int(g)
        start = bounds[w - 1][1] if w > 0 else 0   # the span takes the whitespace before it
        end = bounds[w + L - 1][1]
        if start > c:
            source.append(text[c:start])
        source.append(i)
        target += [i, text[start:end]]
        w, c = w + L, end
    if c < len(text):
        source.append(text[c:])
    return Task("general", source, target)


def morphological_task(text: str, rng: np.random.Generator) -> Task | None:
    words = [w for w in WORD.findall(text.lower())
             if 3 <= len(w) <= 8 and w.isalpha() and not w.endswith(("ing", "ed", "er", "ly", "est"))]
    if not words:
        return None
    w, suffix = words[rng.integers(len(words))], INFLECTIONS[rng.integers(len(INFLECTIONS))]
    return Task("morphological", [f"inflect {w} with {suffix}:"], [w + suffix])


def syntactic_task(text: str, rng: np.random.Generator, sentences: list[str] | None = None) -> Task | None:
    sents = [s for s in (sentences if sentences is not None else sentences_of(text)) if len(s.split()) >= 6]
    if not sents:
        return None
    words = sents[rng.integers(len(sents))].split()
    cut = int(rng.integers(3, len(words) - 1))   # 3 <= cut <= len - 2
    return Task("syntactic", ["complete sentence: " + " ".join(words[:cut])], [" ".join(words[cut:])])


def semantic_task(text: str, rng: np.random.Generator, sentences: list[str] | None = None) -> Task | None:
    sents = sentences if sentences is not None else sentences_of(text)
    if len(sents) < 2:
        return None
    return Task("semantic", ["continue logically: " + sents[0]], [sents[1]])


def make_tasks(text: str, rng: np.random.Generator, domains=DOMAINS, min_chars: int = 150, **span) -> list[Task]:
    """The tasks of one document for the chosen domains (none when it is too short or has no sentence
    of 5 to 40 words, as in the source)."""
    if len(text.strip()) <= min_chars:
        return []
    sents = sentences_of(text)
    if not sents:
        return []
    out = []
    for d in DOMAINS:
        if d not in domains:
            continue
        t = (word_span_corruption(text, rng, **span) if d == "general" else
             morphological_task(text, rng) if d == "morphological" else
             syntactic_task(text, rng, sents) if d == "syntactic" else semantic_task(text, rng, sents))
        if t is not None:
            out.append(t)
    return out


def can_make(text: str, min_chars: int = 150) -> dict[str, bool]:
    """Which domains a document yields a task for (deterministic; used to count tasks)."""
    if len(text.strip()) <= min_chars or not (sents := sentences_of(text)):
        return dict.fromkeys(DOMAINS, False)
    return {"general": len(text.split()) >= 10,
            "morphological": morphological_task(text, np.random.default_rng(0)) is not None,
            "syntactic": any(len(s.split()) >= 6 for s in sents),
            "semantic": len(sents) >= 2}


# --- levels ----------------------------------------------------------------------------------------


def level_cuts(scores: list[float], n_levels: int) -> list[float]:
    """Score thresholds that split the sorted scores into ``n_levels`` equal-count levels (level i =
    the i-th slice, as the source cuts its sorted tasks)."""
    s = sorted(scores)
    if not s:
        return []
    size = max(1, len(s) // n_levels)
    return [s[min(i * size, len(s) - 1)] for i in range(1, n_levels)]


def level_of(score: float, cuts: list[float]) -> int:
    """0-based level of a score given the thresholds of :func:`level_cuts`."""
    return bisect_right(cuts, score) if cuts else 0


def unlocked_level(progress: float, n_levels: int) -> int:
    """Highest unlocked level at curriculum progress p in [0, 1]: min(int(p * n), n - 1)."""
    return min(int(progress * n_levels), n_levels - 1)
