"""Packaged Hydra configs (groups and recipes) for advtrain-train and advtrain-eval."""
