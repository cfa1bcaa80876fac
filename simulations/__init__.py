"""Recipes (TOML) and benchmark scripts. ``fedtune simulate --recipe NAME`` finds the recipes
shipped here by name; benchmarks run as ``python simulations/<bench>.py``."""
