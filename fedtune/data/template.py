"""Alpaca-style prompt template (as in FedIT / OpenFedLLM)."""

from __future__ import annotations

from fedtune.data.example import Example

PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


def render_prompt(example: Example) -> str:
    """The prompt part; the model learns to continue it with ``example.output``."""
    if example.input:
        return PROMPT_WITH_INPUT.format(instruction=example.instruction, input=example.input)
    return PROMPT_NO_INPUT.format(instruction=example.instruction)
