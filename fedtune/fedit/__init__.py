"""FedIT (Zhang et al., "Towards Building the Federated GPT: Federated Instruction Tuning",
ICASSP 2024): clients train LoRA adapters locally; the server averages them."""
