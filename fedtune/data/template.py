"""Alpaca-style prompt template (as in FedIT / OpenFedLLM)."""

from __future__ import annotations

from fedtune.data.example import Example

PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


def render_prompt(example: Example, tokenizer=None) -> str:
    """The prompt part; the model learns to continue it with ``example.output``.

    Chat examples (``example.messages``) use the tokenizer's chat template when it has one
    (with the generation prompt for the assistant's turn); everything else, and chat data on a
    tokenizer without a template, uses the Alpaca template.
    """
    if example.messages and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(example.chat(), tokenize=False,
                                             add_generation_prompt=True)
    if example.input:
        return PROMPT_WITH_INPUT.format(instruction=example.instruction, input=example.input)
    return PROMPT_NO_INPUT.format(instruction=example.instruction)
