"""Models and tokenizers: a Hugging Face id or local folder, or the built-in ``tiny`` preset.

``tiny`` needs no download and no files: a 4-layer Llama (about 1M parameters) with
randomly initialised weights from a fixed seed, and a byte-level BPE tokenizer trained in code
on the built-in task text. Both are deterministic, so every process builds the same model. The
trained tokenizer is cached on disk by the hash of everything its training reads (the text, the
trainer's and the untrained tokenizer's settings, the ``tokenizers`` version), under
``$XDG_CACHE_HOME/fedtune`` (default ``~/.cache/fedtune``); a cache that cannot be read or
written is skipped silently and the tokenizer trained as before.

A model that cannot be loaded (a folder that does not exist or lacks files, a hub id that
cannot be downloaded) is a :class:`ModelError`: one sentence naming it and how to fix it, for
the tokenizer and the model alike.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedtune.errors import ConfigError

if TYPE_CHECKING:  # torch and transformers are imported where used: the CLI's checks of a
    import torch  # model name run before the simulation engine starts, without them
    from transformers import LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

    from fedtune.models.quantize import Quantization

TINY = "tiny"
TINY_SEED = 1234
#: the files a saved tokenizer has at least one of (fast, sentencepiece, BPE, WordPiece)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # owner/name, as the hub spells ids


class ModelError(ConfigError):
    """A model or tokenizer that cannot be loaded; the message names it and how to fix it."""


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """CUDA + bfloat16 when a GPU is present, else CPU + float32; both overridable."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else (
            torch.float32
        )
    else:
        dt = getattr(torch, dtype)
    return Placement(dev, dt)


def cache_dir() -> Path:
    """fedtune's on-disk cache: ``$XDG_CACHE_HOME/fedtune``, else ``~/.cache/fedtune``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedtune"


def _canonical(state: bytes) -> str:
    """A trainer's JSON state with its sets (the initial alphabet) in a stable order."""
    data = json.loads(state)
    for settings in data.values():
        if isinstance(settings.get("initial_alphabet"), list):
            settings["initial_alphabet"] = sorted(settings["initial_alphabet"])
    return json.dumps(data, sort_keys=True)


def _train(tok, trainer, text: list[str]) -> None:
    tok.train_from_iterator(text, trainer=trainer)


def _trained(tok, trainer, text: list[str]):
    """``tok`` trained on ``text``, from the on-disk cache when an identical training (same
    inputs, same ``tokenizers`` version) was cached; else trained and cached. A cache that
    cannot be read or written is skipped."""
    import tokenizers

    digest = hashlib.sha256()
    for part in (tokenizers.__version__, tok.to_str(), _canonical(trainer.__getstate__())):
        digest.update(part.encode() + b"\0")
    for line in text:
        digest.update(line.encode() + b"\0")
    path = cache_dir() / "tokenizers" / f"tiny-{digest.hexdigest()[:32]}.json"
    try:
        return tokenizers.Tokenizer.from_str(path.read_text())
    except Exception:  # absent, unreadable or corrupt (tokenizers raises a bare Exception)
        pass
    _train(tok, trainer, text)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(tok.to_str())
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError:
        pass
    return tok


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (digits split one by one) trained on the built-in task text (cached on
    disk, see the module's docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from fedtune.data.synthetic import corpus
    from fedtune.data.template import PROMPT_NO_INPUT, PROMPT_WITH_INPUT

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=640,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = [PROMPT_WITH_INPUT, PROMPT_NO_INPUT] * 50 + corpus()
    return PreTrainedTokenizerFast(
        tokenizer_object=_trained(tok, trainer, text), bos_token="<s>", eos_token="</s>",
        pad_token="<pad>"
    )


def tiny_config(vocab_size: int) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def build_tiny() -> PreTrainedModel:
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(tiny_config(len(tokenizer)))
    return model


def is_tiny(name: str) -> bool:
    return name == TINY


def model_source(name: str) -> str:
    """``tiny``, ``folder`` or ``hub``: what a ``model`` value names; a path that names no
    model folder is a :class:`ModelError`."""
    if is_tiny(name):
        return "tiny"
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"Model folder '{name}' has no config.json; pass a folder saved "
                             "with save_pretrained (config.json, weights, tokenizer files), "
                             "'tiny' or a Hugging Face hub id.")
        return "folder"
    if path.exists():
        raise ModelError(f"Model '{name}' is a file, not a folder; pass the folder that holds "
                         "its config.json, 'tiny' or a Hugging Face hub id.")
    if not HUB_ID.match(name) or ".." in name:
        raise ModelError(f"Model folder '{name}' does not exist; fix the path, or pass 'tiny' "
                         "or a Hugging Face hub id (owner/name).")
    return "hub"


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")


def _from_pretrained(load: Callable, name: str, what: str, **kwargs):
    """``load(name, **kwargs)`` (a ``from_pretrained``), its failure as one sentence."""
    source = model_source(name)
    try:
        return load(name, **kwargs)
    except (OSError, ValueError) as err:
        if source == "folder":
            raise ModelError(f"Could not load the {what} of the model folder '{name}' "
                             f"({_first_line(err)}); the folder needs config.json, the weights "
                             "and the tokenizer files, as save_pretrained writes them.") from err
        raise ModelError(f"Could not load the {what} of '{name}', which is no local folder, "
                         f"from the Hugging Face hub ({_first_line(err)}); fix the path or the "
                         "hub id, or download the model elsewhere and pass its folder.") from err


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str):
    """Tokenizer with a pad token (the EOS token when the model defines none); one per process."""
    if is_tiny(name):
        tok = tiny_tokenizer()
    else:
        folder = Path(name).expanduser()
        if model_source(name) == "folder" and not any((folder / f).is_file()
                                                      for f in TOKENIZER_FILES):
            # transformers 5.0 builds an empty tokenizer here instead of failing
            raise ModelError(f"Could not load the tokenizer of the model folder '{name}' (it "
                             f"has none of {', '.join(TOKENIZER_FILES)}); the folder needs "
                             "config.json, the weights and the tokenizer files, as "
                             "save_pretrained writes them.")
        from transformers import AutoTokenizer

        tok = _from_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, placement: Placement, quantization: Quantization | None = None
               ) -> PreTrainedModel:
    """A causal LM in ``placement``'s dtype and device, in eval mode; with ``quantization``,
    its linear layers quantised by bitsandbytes (:mod:`fedtune.models.quantize`)."""
    if quantization is not None:
        from fedtune.models.quantize import load_quantized

        return load_quantized(name, placement, quantization)
    if is_tiny(name):
        model = build_tiny()
    else:
        from transformers import AutoModelForCausalLM

        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name, "model",
                                 dtype=placement.dtype)
    model = model.to(device=placement.device, dtype=placement.dtype)
    model.eval()
    return model
