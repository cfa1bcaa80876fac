"""The ``model`` config section: which model, on which device, in which dtype, quantised or not."""

from __future__ import annotations

from dataclasses import dataclass

from fedtune.errors import at_least_one, one_of, require

DTYPES = ("auto", "float32", "bfloat16", "float16")
#: ``quantization`` values: none, bitsandbytes' 4-bit NormalFloat / FloatingPoint, LLM.int8()
QUANTIZATIONS = ("none", "nf4", "fp4", "int8")
FOUR_BIT = ("nf4", "fp4")
INSTALL_HINT = 'pip install -e ".[quantization]"'


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
    # quantised frozen base (bitsandbytes): `none`, `nf4` (QLoRA), `fp4` or `int8`; FedIT only
    quantization: str = "none"
    # the 4-bit layers' matmul dtype: `auto` (bfloat16 on CUDA, float32 on CPU), `float32`,
    # `bfloat16`, `float16`
    quant_compute_dtype: str = "auto"
    quant_double_quant: bool = True  # QLoRA's double quantisation of the 4-bit scales (4-bit only)

    def validate(self) -> None:
        one_of("dtype", self.dtype, DTYPES)
        require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
                f"device='{self.device}' is unknown; use auto, cpu, cuda or cuda:N.")
        at_least_one(max_seq_len=self.max_seq_len)
        self._validate_quantization()

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"

    def _validate_quantization(self) -> None:
        one_of("quantization", self.quantization, QUANTIZATIONS)
        one_of("quant-compute-dtype", self.quant_compute_dtype, DTYPES)
        four_bit = self.quantization in FOUR_BIT
        require(four_bit or self.quant_compute_dtype == "auto",
                f"quant-compute-dtype='{self.quant_compute_dtype}' sets the matmul dtype of 4-bit "
                f"layers, but quantization='{self.quantization}'; use quantization nf4 or fp4, "
                "or drop quant-compute-dtype.")
        require(four_bit or self.quant_double_quant,
                "quant-double-quant=false applies to 4-bit layers, but quantization="
                f"'{self.quantization}'; use quantization nf4 or fp4, or drop "
                "quant-double-quant.")
        if self.quantized:
            import importlib.util

            require(importlib.util.find_spec("bitsandbytes") is not None,
                    f"quantization='{self.quantization}' needs bitsandbytes, which is not "
                    f"installed; run {INSTALL_HINT} (or use quantization='none').")
