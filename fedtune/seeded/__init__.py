"""Seeded full-parameter updates: a model moves along directions regenerated from seeds.

Shared by FedKSeed (Qin et al., ICML 2024; zeroth-order steps along z(seed)) and Ferret
(Shu et al., 2024; first-order updates projected onto z(seed, block)).
``rng`` makes z(seed) bit-identical on every device, ``params`` says which tensors are tuned,
``step`` takes one ZO step, ``pool`` holds the K seeds, FedKSeed-Pro's statistics and the upload
format, ``versions`` defines the global model of a version A exactly (integer sums, incremental
catch-up, w0 and the sums in files), ``fused`` is its many-seeds-per-pass kernel, and
``replay`` is the float per-seed replay (the benchmarks' baseline). Plain torch + numpy; no
Flower imports.
"""

from fedtune.seeded.params import zo_named_parameters, zo_parameters
from fedtune.seeded.pool import (
    PRO_CLIP,
    SeedPool,
    accumulate_,
    derive_seeds,
    pack_pairs,
    sample_seed_indices,
    unpack_pairs,
)
from fedtune.seeded.replay import float32_snapshot, replay_
from fedtune.seeded.rng import (
    NORMAL_TABLE,
    add_perturbation_,
    perturbation,
    perturbations,
)
from fedtune.seeded.step import ZOStepResult, zo_step

__all__ = [
    "NORMAL_TABLE",
    "PRO_CLIP",
    "SeedPool",
    "ZOStepResult",
    "accumulate_",
    "add_perturbation_",
    "derive_seeds",
    "float32_snapshot",
    "pack_pairs",
    "perturbation",
    "perturbations",
    "replay_",
    "sample_seed_indices",
    "unpack_pairs",
    "zo_named_parameters",
    "zo_parameters",
    "zo_step",
]
