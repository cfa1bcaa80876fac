"""Rouge-L and exact match against hand-computed values and against ``rouge-score``'s own
scorer; generation is batched greedy."""

import functools
import importlib.util
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.data.example import Example
from fedtune.eval.generate import answer_metrics, generate, normalize_answer, rouge_l
from fedtune.models.loading import choose_placement, load_model, load_tokenizer


def test_rouge_l_matches_hand_computation():
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # LCS("a b c d", "a x c y d") = 3 (a c d): P = 3/4, R = 3/5, F = 2/3
    assert rouge_l("a b c d", "a x c y d") == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert rouge_l("Odd.", "odd") == 1.0  # lower-cased, punctuation ignored
    assert rouge_l("", "odd") == 0.0
    assert normalize_answer("  Red  Fox ") == "red fox"


# words that repeat (so subsequences matter), case, digits, punctuation, non-ASCII, whitespace
WORDS = st.sampled_from(["the", "The", "cat", "CAT", "sat", "mat", "a", "b", "42", "x7", "",
                         ".", "...", "don't", "e-mail", "über", "naïve", "日本", "\t", "\n"])
TEXTS = st.lists(WORDS, max_size=12).map(" ".join) | st.text(max_size=30)


@functools.cache
def _rouge_scorer():
    """The reference: rouge-score's own scorer (it imports nltk, which the test may)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


@settings(max_examples=300, deadline=None)
@given(prediction=TEXTS, reference=TEXTS)
def test_rouge_l_is_rouge_scores_rouge_l_bit_for_bit(prediction, reference):
    """The score the results report is ``rouge-score``'s RougeScorer(["rougeL"]) F-measure,
    the same float, whatever the text."""
    expected = _rouge_scorer().score(reference, prediction)["rougeL"]
    assert rouge_l(prediction, reference) == expected.fmeasure


def test_rouge_l_imports_no_nltk(monkeypatch):
    """``rouge_score.rouge_scorer`` imports nltk (0.4 CPU-s in each evaluating process, for a
    stemmer Rouge-L here does not use): a fresh copy of the module scores with both hidden."""
    monkeypatch.setitem(sys.modules, "nltk", None)  # `import nltk` now raises ImportError
    monkeypatch.setitem(sys.modules, "rouge_score.rouge_scorer", None)
    import rouge_score  # and not as the package's attribute, which an earlier import set

    monkeypatch.delattr(rouge_score, "rouge_scorer", raising=False)
    import fedtune.eval.generate as generate_module

    spec = importlib.util.spec_from_file_location("fresh_generate", generate_module.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)


def test_batched_generation_equals_one_by_one_and_metrics_add_up():
    tok = load_tokenizer("tiny")
    model = load_model("tiny", choose_placement("cpu", "float32"))
    prompts = ["### Instruction:\nGive the first word.\n\n### Response:\n", "Is 4 even", "x"]
    batched = generate(model, tok, prompts, max_new_tokens=5, batch_size=3)
    single = [generate(model, tok, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == single  # left padding does not change greedy answers
    examples = [Example("Give the first word.", output=batched[0], input="", category="a"),
                Example("Give the first word.", output="zzz", input="", category="b")]
    m = answer_metrics(model, tok, examples, max_new_tokens=5)
    assert m["exact_match/a"] == 1.0 and m["exact_match/b"] == 0.0
    assert m["exact_match"] == 0.5 and m["evaluated/a"] == 1.0
    # the random model's answer has word tokens ("door door"), none of them "zzz": a's answer is
    # its reference (F = 1), b's shares no token with it (F = 0)
    assert rouge_l(batched[0], batched[0]) == 1.0 and "zzz" not in batched[0]  # has tokens
    assert (m["rouge_l/a"], m["rouge_l/b"], m["rouge_l"]) == (1.0, 0.0, 0.5)


def test_answer_metrics_average_rouge_l_per_example_and_category(monkeypatch):
    """Known answers (generation replaced) against references with hand-computed Rouge-L F."""
    from fedtune.eval import generate as gen

    answers = ["the cat sat", "a b", " Odd "]
    monkeypatch.setattr(gen, "generate", lambda model, tok, prompts, *a: answers[:len(prompts)])
    examples = [Example("q1", output="the cat sat on the mat", category="c"),  # P 1, R 1/2
                Example("q2", output="a c d e", category="c"),  # LCS 1: P 1/2, R 1/4, F 1/3
                Example("q3", output="odd", category="d")]  # equal once normalized
    m = answer_metrics(None, load_tokenizer("tiny"), examples)
    assert m["rouge_l/c"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m["rouge_l/d"] == 1.0 and m["exact_match/d"] == 1.0 and m["exact_match/c"] == 0.0
    assert m["rouge_l"] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
    assert (m["evaluated/c"], m["evaluated/d"]) == (2.0, 1.0)


def test_ni_prompts_are_fitted_so_the_answer_fits_stories260ks_context(stories_path):
    """stories260k has 512 positions: prompt + max-new-tokens must fit them. A long definition
    gives way; an input too long even without it is not generated but counted."""
    from fedtune.data.tokenize import prompt_ids

    tok = load_tokenizer(str(stories_path))
    model = load_model(str(stories_path), choose_placement("cpu", "float32"))
    assert model.config.max_position_embeddings == 512
    examples = [Example("Say yes.", output="yes", input="Is it?", category="short"),
                Example("Copy the word. " * 200, output="cat", input="cat", category="long-def"),
                Example("Copy.", output="dog", input="dog bird " * 400, category="long-input")]
    assert len(prompt_ids(tok, examples[1])) > 512 and len(prompt_ids(tok, examples[2])) > 512
    lengths: list[int] = []
    real = model.generate

    def generate(**kw):
        out = real(**kw)
        lengths.append(out.shape[1])
        assert kw["input_ids"].shape[1] + kw["max_new_tokens"] <= 512
        return out

    model.generate = generate
    m = answer_metrics(model, tok, examples, max_new_tokens=32, max_len=512)
    assert lengths and max(lengths) <= 512
    assert m["eval_skipped"] == 1.0
    assert m["evaluated/short"] == m["evaluated/long-def"] == 1.0
    assert "evaluated/long-input" not in m
    # the run's max-seq-len above the model's context: the context is the limit
    m = answer_metrics(model, tok, examples[1:2], max_new_tokens=32, max_len=4096)
    assert max(lengths) <= 512 and "eval_skipped" not in m
