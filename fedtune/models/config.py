"""The ``model`` config section: which model, on which device, in which dtype."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import at_least_one, one_of, require

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    model: str = "tiny"  # "tiny" (built in, no download), a Hugging Face hub id, or a local folder
    # `auto` (bfloat16 on CUDA, float32 on CPU), `float32`, `bfloat16`, `float16`
    dtype: str = "auto"
    device: str = "auto"  # auto: cuda when available, else cpu
    # tokens per example (prompt + response); longer responses are cut, examples with no response
    # left are dropped
    max_seq_len: int = 128
    gradient_checkpointing: bool = False  # trade compute for activation memory in local rounds
    # CUDA only: deterministic kernels and cuBLAS workspace (fedtune.seeding.deterministic_cuda)
    deterministic: bool = True

    def validate(self) -> None:
        one_of("dtype", self.dtype, DTYPES)
        require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
                f"device='{self.device}' is unknown; use auto, cpu, cuda or cuda:N.")
        at_least_one(max_seq_len=self.max_seq_len)
