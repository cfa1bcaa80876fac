"""The `tiny` tokenizer's on-disk cache (issue #27): a cached tokenizer is the freshly trained
one (same vocabulary, merges and ids), a corrupt cache file is rebuilt, and a cache folder that
cannot be written is skipped without an error."""

import json

import pytest

from fedtune.data.synthetic import corpus
from fedtune.models import loading

TEXTS = ["Is the number even or odd? 123", "### Instruction:\nAdd 4 and 5.\n\n### Response:\n9",
         "unseen words: zebra quokka, ümlaut, 😀"] + corpus()[:50]


def _build(monkeypatch, cache_home):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return loading.tiny_tokenizer.__wrapped__()  # past the per-process lru_cache


def _files(cache_home):
    return sorted((cache_home / "fedtune" / "tokenizers").glob("tiny-*.json"))


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """Trained in code: the cache folder is a file, so nothing is read or written."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    return _build(monkeypatch, blocked)


def _same(a, b):
    assert a.get_vocab() == b.get_vocab()
    model_a = json.loads(a.backend_tokenizer.to_str())["model"]
    model_b = json.loads(b.backend_tokenizer.to_str())["model"]
    assert model_a["merges"] == model_b["merges"] and model_a == model_b
    assert (a.pad_token_id, a.bos_token_id, a.eos_token_id, len(a)) == (
        b.pad_token_id, b.bos_token_id, b.eos_token_id, len(b))
    for text in TEXTS:
        assert a(text)["input_ids"] == b(text)["input_ids"], text


def test_a_cached_tokenizer_encodes_as_a_freshly_trained_one(monkeypatch, tmp_path, fresh):
    home = tmp_path / "cache"
    first = _build(monkeypatch, home)  # trains and writes the cache
    (cached_file,) = _files(home)

    def no_training(*_):
        raise AssertionError("trained although the cache holds this tokenizer")

    monkeypatch.setattr(loading, "_train", no_training)
    cached = _build(monkeypatch, home)  # reads it
    _same(first, fresh)
    _same(cached, fresh)
    assert _files(home) == [cached_file]


def test_a_corrupt_cache_file_is_rebuilt_not_fatal(monkeypatch, tmp_path, fresh):
    home = tmp_path / "cache"
    _build(monkeypatch, home)
    (cached_file,) = _files(home)
    for bad in ('{"version": "1.0", "model": {"type": "BPE"', "not json at all", ""):
        cached_file.write_text(bad)
        rebuilt = _build(monkeypatch, home)
        _same(rebuilt, fresh)
        json.loads(cached_file.read_text())  # written again, whole


def test_the_cache_key_changes_with_the_training_text(monkeypatch, tmp_path):
    home = tmp_path / "cache"
    _build(monkeypatch, home)
    monkeypatch.setattr("fedtune.data.synthetic.corpus", lambda: corpus()[:-1])
    _build(monkeypatch, home)
    assert len(_files(home)) == 2
