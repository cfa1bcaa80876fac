"""The built-in synthetic multi-task instruction set (no download, generated in code).

Four task categories that need different skills: ``parity`` (classify a number as even or
odd), ``first`` (copy the first of several words), ``larger`` (compare two numbers) and ``next``
(add one to a number). Whether an
input is held out is a pure function of the category and the input text, so the training and
held-out sets are disjoint by construction, on every client and every machine.
"""

from __future__ import annotations

import hashlib
import random

from fedtune.data.example import Example

CATEGORIES = ("parity", "first", "larger", "next")

WORDS = (
    "red blue green gold cat dog fox owl sun moon star tree rain snow wind leaf "
    "ship road lamp door book pen cup box hat bell key coin fish bird frog milk"
).split()

INSTRUCTIONS = {
    "parity": ("Is the number even or odd?", "Say whether the number is even or odd."),
    "first": ("Give the first word.", "Which word comes first?"),
    "larger": ("Which number is larger?", "Give the larger of the two numbers."),
    "next": ("What number comes after this one?", "Add one to the number."),
}


def is_held_out(category: str, text: str) -> bool:
    """One input in eight is reserved for evaluation; stable across processes."""
    digest = hashlib.sha256(f"{category}|{text}".encode()).digest()
    return digest[0] % 8 == 0


def _instance(category: str, rng: random.Random) -> tuple[str, str]:
    if category == "parity":
        n = rng.randrange(1000)
        return str(n), "even" if n % 2 == 0 else "odd"
    if category == "first":
        words = rng.sample(WORDS, rng.randint(3, 5))
        return " ".join(words), words[0]
    if category == "larger":
        a, b = rng.sample(range(100), 2)
        return f"{a} {b}", str(max(a, b))
    if category == "next":
        n = rng.randrange(999)
        return str(n), str(n + 1)
    raise ValueError(f"unknown category '{category}'")


def wrong_answer(category: str, text: str, answer: str, rng: random.Random) -> str:
    """A plausible but wrong answer to ``text``, in the same format as the right one.

    Drawn so that right and wrong answers share one length distribution (the other parity
    word, another word of the list, the smaller number, a neighbour of the successor), so a
    preference between them is about correctness, not length.
    """
    if category == "parity":
        return "odd" if answer == "even" else "even"
    if category == "first":
        return rng.choice([w for w in text.split() if w != answer])
    if category == "larger":
        return next(w for w in text.split() if w != answer)
    if category == "next":
        n = int(text)
        return str(rng.choice((n, n + 2)))
    raise ValueError(f"unknown category '{category}'")


def make_examples(
    category: str, n: int, seed: int, held_out: bool = False
) -> list[Example]:
    """``n`` examples of one category, from the training or the held-out side of the split."""
    rng = random.Random(f"{category}-{seed}-{held_out}")
    out: list[Example] = []
    while len(out) < n:
        text, answer = _instance(category, rng)
        if is_held_out(category, text) != held_out:
            continue
        instruction = rng.choice(INSTRUCTIONS[category])
        out.append(Example(instruction=instruction, input=text, output=answer,
                           category=category))
    return out


def client_examples(
    partition_id: int, num_partitions: int, n: int, seed: int, held_out: bool = False
) -> list[Example]:
    """A non-IID client: 80% from one primary category, 20% from the next one."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition id {partition_id} outside [0, {num_partitions})")
    primary = CATEGORIES[partition_id % len(CATEGORIES)]
    secondary = CATEGORIES[(partition_id + 1) % len(CATEGORIES)]
    n_primary = round(0.8 * n)
    node_seed = seed * 100_003 + partition_id
    examples = make_examples(primary, n_primary, node_seed, held_out) + make_examples(
        secondary, n - n_primary, node_seed, held_out
    )
    random.Random(node_seed).shuffle(examples)
    return examples


def eval_examples(n: int, seed: int) -> list[Example]:
    """The centralized held-out set: ``n`` examples spread evenly over all categories."""
    per = [n // len(CATEGORIES) + (i < n % len(CATEGORIES)) for i in range(len(CATEGORIES))]
    out: list[Example] = []
    for category, k in zip(CATEGORIES, per, strict=True):
        out += make_examples(category, k, seed=10_000 + seed, held_out=True)
    return out


def corpus(seed: int = 0, per_category: int = 400) -> list[str]:
    """Text used to train the `tiny` preset's tokenizer (instructions, inputs and answers)."""
    lines = [" ".join(WORDS)]
    for category in CATEGORIES:
        lines += list(INSTRUCTIONS[category])
        for held_out in (False, True):
            for ex in make_examples(category, per_category // 2, seed, held_out):
                lines += [ex.input, ex.output]
    return lines
