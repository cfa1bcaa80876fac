"""fedtune: federated fine-tuning of language models on Flower (FedIT with LoRA, FedKSeed)."""

__version__ = "0.1.0"
