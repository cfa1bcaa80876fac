"""Quantised frozen bases (``quantization``): bitsandbytes through transformers'
``BitsAndBytesConfig``, on CPU and CUDA.

A quantised base is loaded with ``from_pretrained(..., quantization_config=...)``: a local
folder or hub id directly; the built-in ``tiny`` preset (built in code) is saved once per
process to a temporary folder and loaded from there, so it is quantised exactly as a real
checkpoint would be. Embeddings and the output head stay unquantised (transformers' default).
Only the frozen base is quantised: the adapter trains, travels and is saved in full precision.
The adapter folder's base is the unquantised one; ``fedtune export`` (and ``generate``)
quantise it as the run did and merge the adapter into its dequantised float32 weights
(:func:`adapter_base`): the model the run trained and evaluated, in full precision. (Merging
into the original weights instead gives another model: W0 + s B A where the adapter was
trained against Q(W0); ``AutoPeftModelForCausalLM.from_pretrained(adapter_folder)`` does that.)

Every party quantises the same weights with the same settings, so clients and server hold
bit-identical quantised bases (quantisation is deterministic).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedtune.models.config import FOUR_BIT

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig, PreTrainedModel

    from fedtune.models.config import ModelConfig
    from fedtune.models.loading import Placement


#: ``peft-method`` values that train on a bitsandbytes base: their layers run the quantised
#: layer's own forward and add to or transform around it (peft's bnb dispatch for LoRA and
#: IA3, the generic quantised-linear dispatch for VeRA, an additive branch for FourierFT, an
#: input rotation for OFT) or leave the linear layers alone (prompt tuning, LN tuning). Checked
#: by training each on nf4, fp4 and int8 bases with peft 0.21.2 (tests/test_quantization.py).
QUANTIZED_METHODS = frozenset({"lora", "ia3", "vera", "fourierft", "oft", "prompt-tuning",
                               "ln-tuning"})
#: and with int8 only: LoHa and LoKr shape their update like the base weight tensor, which
#: int8 keeps unpacked (4-bit packs it into a column, and their forward fails)
INT8_ONLY_METHODS = frozenset({"loha", "lokr"})


def method_fits(method: str, kind: str) -> bool:
    """Whether ``peft-method`` trains on a base quantised as ``kind`` (nf4, fp4, int8)."""
    return method in QUANTIZED_METHODS or (kind == "int8" and method in INT8_ONLY_METHODS)


@dataclass(frozen=True)
class Quantization:
    """How the frozen base is quantised (the ``model`` section's ``quantization``,
    ``quant-compute-dtype`` and ``quant-double-quant``)."""

    kind: str  # nf4 | fp4 | int8
    compute_dtype: str = "auto"
    double_quant: bool = True

    @classmethod
    def of(cls, m: ModelConfig) -> Quantization | None:
        """The section's quantisation, or None for ``quantization='none'``."""
        if m.quantization == "none":
            return None
        return cls(m.quantization, m.quant_compute_dtype, m.quant_double_quant)

    @property
    def four_bit(self) -> bool:
        return self.kind in FOUR_BIT

    def as_dict(self) -> dict:
        """What an adapter folder's ``fedtune.json`` records (4-bit settings only for 4-bit)."""
        out = asdict(self)
        return out if self.four_bit else {"kind": self.kind}

    def bnb_config(self, placement: Placement) -> BitsAndBytesConfig:
        """transformers' ``BitsAndBytesConfig``; compute dtype ``auto`` = the placement's
        default (bfloat16 on CUDA, float32 on CPU)."""
        from transformers import BitsAndBytesConfig

        from fedtune.models.loading import choose_placement

        if not self.four_bit:
            return BitsAndBytesConfig(load_in_8bit=True)
        compute = choose_placement(str(placement.device), self.compute_dtype).dtype
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.kind,
                                  bnb_4bit_compute_dtype=compute,
                                  bnb_4bit_use_double_quant=self.double_quant)


def _device_map(placement: Placement) -> dict[str, str]:
    import torch

    dev = placement.device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return {"": str(dev)}


@functools.cache
def tiny_folder() -> str:
    """The built-in ``tiny`` preset saved as a model folder, once per process (removed at
    exit), so ``from_pretrained`` can quantise it."""
    from fedtune.models.loading import build_tiny

    folder = Path(tempfile.mkdtemp(prefix="fedtune-tiny-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    build_tiny().save_pretrained(folder)
    return str(folder)


def quiet() -> None:
    """Silence bitsandbytes' per-call note that LLM.int8() casts float32 inputs to float16."""
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")


def load_quantized(name: str, placement: Placement, quant: Quantization) -> PreTrainedModel:
    """The causal LM ``name`` with its linear layers quantised by bitsandbytes, on
    ``placement``'s device; the unquantised modules in ``placement``'s dtype; eval mode."""
    from transformers import AutoModelForCausalLM

    from fedtune.models.loading import _from_pretrained, is_tiny

    quiet()
    folder = tiny_folder() if is_tiny(name) else name
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, folder, "model",
                             dtype=placement.dtype,
                             quantization_config=quant.bnb_config(placement),
                             device_map=_device_map(placement))
    _own_memory(model)
    _same_kernel_on_every_cpu(model)
    model.eval()
    return model


def _same_kernel_on_every_cpu(model) -> None:
    """Keep bitsandbytes' 4-bit layers on their portable CPU path. On a CPU with AVX512-BF16,
    bitsandbytes (0.49-0.50) repacks a 4-bit weight for a bfloat16 kernel the first time the
    layer runs in eval mode without grad: an evaluation would then depend on the machine's
    instruction set, and the repacking fails outright for an input width that is not a
    multiple of the block size (``tiny``'s 352-wide ``down_proj``). Turning the flag off keeps
    one result for one config on every CPU; CUDA layers are not affected."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def _own_memory(model) -> None:
    """Copy the unquantised weights (embeddings, norms, head) that are still views of the
    checkpoint's memory-mapped file into the process's own memory, so the mapping closes: it
    would otherwise keep the full-precision weights just quantised resident (about 340 MB of a
    134M Llama's 520 MB file, counted in the client's RSS though never read again)."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for _, tensor in own:
                if tensor.device.type == "cpu" and type(tensor).__name__ not in (
                        "Params4bit", "Int8Params"):
                    tensor.data = tensor.data.clone()


def dequantized(name: str, quant: Quantization) -> PreTrainedModel:
    """The base exactly as a quantised run computed with it, in float32 on CPU: ``name``
    quantised as ``quant``, then every bitsandbytes layer replaced by a ``Linear`` holding its
    dequantised weight (transformers' ``dequantize``). With nf4/fp4 its outputs equal the
    quantised model's; with int8 they differ by LLM.int8()'s rounding of the activations."""
    from fedtune.models.loading import choose_placement

    model = load_quantized(name, choose_placement("cpu", "float32"), quant).dequantize()
    model.is_loaded_in_4bit = model.is_loaded_in_8bit = False
    return model


def adapter_base(folder: Path | str) -> PreTrainedModel | None:
    """For an adapter folder trained on a quantised base (its ``fedtune.json`` says so): the
    :func:`dequantized` base to merge it into; None for any other folder."""
    try:
        saved = json.loads((Path(folder) / "fedtune.json").read_text())["quantization"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    import importlib.util

    from peft import PeftConfig

    from fedtune.errors import ConfigError
    from fedtune.models.config import INSTALL_HINT

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"The adapter in '{folder}' was trained on a base quantised as "
                          f"{saved.get('kind')}, and merging it quantises that base again, "
                          f"which needs bitsandbytes; run {INSTALL_HINT}.")
    base = PeftConfig.from_pretrained(str(folder)).base_model_name_or_path
    return dequantized(base, Quantization(**saved))


def is_quantized(model) -> bool:
    """Whether ``model`` (or the base under a peft model) was loaded quantised."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False)
                or getattr(base, "is_loaded_in_8bit", False))


def saved_quantization(m: ModelConfig) -> dict:
    """The ``fedtune.json`` entry of an adapter trained on a quantised base (``{}`` if none).
    The adapter folder's base is the unquantised one; ``fedtune export`` quantises it as the
    run did and merges into its dequantised float32 weights (:func:`adapter_base`), the model
    the run trained and evaluated."""
    quant = Quantization.of(m)
    if quant is None:
        return {}
    return {"quantization": quant.as_dict(),
            "export_merges_into": "the dequantised base (the quantised weights in float32)"}
