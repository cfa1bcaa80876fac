"""One instruction-following example (prompt, response): the record of SFT data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One (prompt, response) pair.

    ``messages`` is set for chat data only: the ``(role, content)`` turns before the response,
    so the prompt can be rendered with a tokenizer's chat template. For chat data,
    ``instruction`` is the last user turn and ``input`` the earlier turns as ``role: content``
    lines, which is what the Alpaca template shows when no chat template is used.
    """

    instruction: str
    output: str
    input: str = ""
    category: str = ""
    messages: tuple[tuple[str, str], ...] = ()

    def chat(self) -> list[dict[str, str]]:
        """The prompt turns as ``[{"role", "content"}]`` (for ``apply_chat_template``)."""
        return [{"role": role, "content": content} for role, content in self.messages]
