"""Codegen: turns a plan into readable per-stage PyTorch modules and a pipeline config."""
