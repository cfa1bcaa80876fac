"""Models and tokenizers: a Hugging Face id or local folder, or the built-in ``tiny`` preset.

``tiny`` needs no download and no files: a 4-layer Llama (about 1M parameters) with
randomly initialised weights from a fixed seed, and a byte-level BPE tokenizer trained in code
on the built-in task text. Both are deterministic, so every process builds the same model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

TINY = "tiny"
TINY_SEED = 1234


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """CUDA + bfloat16 when a GPU is present, else CPU + float32; both overridable."""
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


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (digits split one by one) trained on the built-in task text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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
    tok.train_from_iterator(text, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(vocab_size: int) -> LlamaConfig:
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
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(tiny_config(len(tokenizer)))
    return model


def is_tiny(name: str) -> bool:
    return name == TINY


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str):
    """Tokenizer with a pad token (the EOS token when the model defines none); one per process."""
    if is_tiny(name):
        tok = tiny_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, placement: Placement) -> PreTrainedModel:
    """A causal LM in ``placement``'s dtype and device, in eval mode."""
    if is_tiny(name):
        model = build_tiny()
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=placement.dtype)
        except OSError as err:
            where = "local folder" if Path(name).exists() else "hub id (needs network)"
            raise ValueError(
                f"Could not load model '{name}' as a {where}: {err}. Pass 'tiny', a folder "
                "with config.json and weights, or a reachable Hugging Face hub id."
            ) from err
    model = model.to(device=placement.device, dtype=placement.dtype)
    model.eval()
    return model
