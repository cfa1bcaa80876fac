"""Rouge-L and exact match against hand-computed values; generation is batched greedy."""

import pytest

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
    assert m["rouge_l/a"] == 1.0 or batched[0].strip() == ""
