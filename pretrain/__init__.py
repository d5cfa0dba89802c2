"""Self-supervised pretraining with mutual-information bounds (η-MINE and baselines)."""
