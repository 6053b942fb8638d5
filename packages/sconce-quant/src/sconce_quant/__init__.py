"""sconce-quant."""
