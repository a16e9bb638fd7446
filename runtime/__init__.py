"""Runtime: executes the generated pipeline on torch.distributed."""
