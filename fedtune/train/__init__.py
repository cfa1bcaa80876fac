"""Local training rounds (SFT now; the objectives are shared by LoRA and zeroth-order)."""
