"""Experiments: `tunelab sweep` runs variants of a recipe into a results store; `tunelab compare` reports on them."""
