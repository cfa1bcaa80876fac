"""FedKSeed (Qin et al., "Federated Full-Parameter Tuning of Billion-Sized Language Models with
Communication Cost under 18 Kilobytes", ICML 2024): clients take zeroth-order steps along
perturbations drawn from a fixed pool of K seeds and upload only (seed index, scalar) pairs; every
party holds the same model w = w0 - lr * sum_s A_s z(s). FedKSeed-Pro samples seeds by importance.
The math lives in ``fedtune.zo``; this package is the algorithm's client and server sides."""
