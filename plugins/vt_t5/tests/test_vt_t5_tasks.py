"""Task generators and the complexity score on hand-made documents (no torch)."""

import numpy as np
import pytest

from kinlm_vt_t5.tasks import (complexity, level_cuts, level_of, make_tasks, morphological_task, semantic_task,
                               sentences_of, syntactic_task, unlocked_level, word_span_corruption)

DOC = ("The children were playing in the garden because the sun was shining. However, their mother had been "
       "watching them carefully from the kitchen window. She decided that they should come inside before the rain "
       "started. Everyone agreed, although the youngest boy complained loudly about it.")
SIMPLE = ("The cat sat on the mat and it was a good day for the cat. The dog sat on the mat and it was a good day "
          "for the dog. The man and the woman had a day at work and it was a good day.")
HARD = ("Notwithstanding institutional considerations, the theoretical conceptualization of epistemological "
        "frameworks, which had been systematically misinterpreted, nevertheless necessitates reconsideration. "
        "Consequently, although methodological disagreements persist, interdisciplinary investigations have "
        "been undertaken whereas multidimensional characterizations remain underdeveloped.")


def render(parts):
    return "".join(p if isinstance(p, str) else f"<extra_id_{p}>" for p in parts)


@pytest.mark.parametrize("count", ["words", "spans"])
def test_span_corruption_sentinels_targets_and_no_word_masked_twice(count):
    n_words = len(DOC.split())
    for seed in range(50):
        t = word_span_corruption(DOC, np.random.default_rng(seed), density=0.15, lengths=(1, 2, 3), count=count)
        sent_src = [p for p in t.source if isinstance(p, int)]
        sent_tgt = [p for p in t.target if isinstance(p, int)]
        k = len(sent_src)
        assert sent_src == list(range(k)) == sent_tgt               # each sentinel once, in order, in both
        assert all(isinstance(t.target[2 * i + 1], str) for i in range(k)) and len(t.target) == 2 * k
        spans = {i: t.target[2 * i + 1] for i in range(k)}
        filled = "".join(spans[p] if isinstance(p, int) else p for p in t.source)
        assert filled == DOC                                        # source + spans = the text: nothing lost or doubled
        lengths = [len(s.split()) for s in spans.values()]
        assert all(1 <= L <= 3 for L in lengths)
        # spans never touch: between two sentinels the source keeps at least one word
        for a, b in zip(t.source, t.source[1:]):
            assert not (isinstance(a, int) and isinstance(b, int))
        masked = sum(lengths)
        if count == "words":
            assert round(0.15 * n_words) <= masked <= round(0.15 * n_words) + 2
        else:
            assert k == int(0.15 * n_words)


def test_span_corruption_needs_ten_words():
    assert word_span_corruption("too short to corrupt at all", np.random.default_rng(0)) is None


def test_each_task_generator_on_a_hand_made_document():
    rng = np.random.default_rng(3)
    sents = sentences_of(DOC)
    assert sents[0].startswith("The children") and len(sents) == 4
    m = morphological_task(DOC, rng)
    prompt = m.source[0]
    word, suffix = prompt.split()[1], prompt.split()[3].rstrip(":")
    assert prompt == f"inflect {word} with {suffix}:" and m.target == [word + suffix]
    assert suffix in ("ing", "ed", "er", "s") and word in DOC.lower() and 3 <= len(word) <= 8
    s = syntactic_task(DOC, rng)
    prefix = s.source[0].removeprefix("complete sentence: ")
    assert f"{prefix} {s.target[0]}" in sents and len(prefix.split()) >= 3 and len(s.target[0].split()) >= 2
    sem = semantic_task(DOC, rng)
    assert sem.source == ["continue logically: " + sents[0]] and sem.target == [sents[1]]
    tasks = make_tasks(DOC, rng)
    assert [t.domain for t in tasks] == ["general", "morphological", "syntactic", "semantic"]


def test_documents_that_yield_no_task():
    rng = np.random.default_rng(0)
    assert make_tasks("A short note. " * 5, rng, min_chars=150) == []                 # 70 characters
    assert make_tasks("word " * 60, rng) == []                                       # no sentence end
    one = "This single sentence has quite a few words in it but there is only one of them here " * 2
    assert [t.domain for t in make_tasks(one.strip() + ".", rng)] == ["general", "morphological", "syntactic"]
    long = "This sentence has far too many words " * 7                                # one 42-word sentence
    assert make_tasks(long.strip() + ".", rng) == []


def test_complexity_orders_simple_below_hard_and_stays_in_range():
    s, h = complexity(SIMPLE), complexity(HARD)
    for k in ("morphological", "syntactic", "semantic", "lexical", "overall"):
        assert 0.01 <= s[k] <= 1 and 0.01 <= h[k] <= 1
    assert h["morphological"] > s["morphological"] + 0.2
    assert h["syntactic"] > s["syntactic"] and h["semantic"] > s["semantic"] and h["overall"] > s["overall"] + 0.2
    expected = 0.25 * h["morphological"] + 0.35 * h["syntactic"] + 0.25 * h["semantic"] + 0.15 * h["lexical"]
    assert h["overall"] == pytest.approx(min(expected, 1.0), abs=1e-9)


def test_levels_are_equal_count_and_unlock_as_the_source():
    scores = list(np.linspace(0, 1, 12))
    cuts = level_cuts(scores, 4)
    assert [sum(level_of(x, cuts) == L for x in scores) for L in range(4)] == [3, 3, 3, 3]
    # progress p = 0, 1/3, 2/3, 1 over the four curriculum epochs
    ps = [0, 1 / 3, 2 / 3, 1]
    assert [unlocked_level(p, 3) for p in ps] == [0, 1, 2, 2]
    assert [unlocked_level(p, 4) for p in ps] == [0, 1, 2, 3]
    assert [unlocked_level(p, 5) for p in ps] == [0, 1, 3, 4]
