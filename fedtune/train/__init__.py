"""Local training rounds: SFT and DPO, objectives shared by LoRA and zeroth-order."""
