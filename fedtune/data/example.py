"""The record every reader produces: one instruction-following example."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    instruction: str
    output: str
    input: str = ""
    category: str = ""
