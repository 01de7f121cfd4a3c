"""How far the fp8 K/V store moves the logits (README.md)."""
