"""Per-layer budgets (CacheConfig.layer_ratios): deeper layers may recompute more tokens.

Each layer's input is the output of the layers below it, so a stale feature in a shallow layer
feeds every layer above: deep features drift more between refreshes than shallow ones. A uniform
transfer_ratio spends the same budget on every layer; `ramp_ratios` moves part of it from shallow
to deep layers at the same mean, so a partial step costs (about: each layer rounds down) the same.
"""

from __future__ import annotations


def ramp_ratios(n_layers: int, transfer_ratio: float, spread: float = 0.5) -> tuple[float, ...]:
    """Ratios rising linearly over layers 1 .. n_layers - 1 from transfer_ratio * (1 - spread) to
    transfer_ratio * (1 + spread) (mean transfer_ratio); entry 0 (layer 0 always recomputes every
    token) is transfer_ratio. spread 0 = uniform."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}.")
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"spread must be in [0, 1] (0 = uniform), got {spread!r}.")
    if not 0.0 <= transfer_ratio * (1 + spread) <= 1.0:
        raise ValueError(
            f"transfer_ratio {transfer_ratio!r} with spread {spread!r} puts the deepest layer at "
            f"{transfer_ratio * (1 + spread):g}, outside [0, 1]; lower one of them.")
    partial = n_layers - 1
    if partial <= 1:
        return (transfer_ratio,) * n_layers
    return (transfer_ratio,) + tuple(
        transfer_ratio * (1 + spread * (2 * i / (partial - 1) - 1)) for i in range(partial)
    )
