"""CacheConfig: the three knobs of the method, validated at construction."""

from __future__ import annotations

import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class CacheConfig:
    """How often each feature group is refreshed.

    prompt_interval (Kp): prompt tokens' K/V, attention and FFN outputs are recomputed
        every Kp denoising steps and reused in between.
    response_interval (Kr): all response tokens are recomputed every Kr steps.
    transfer_ratio: on the steps in between, this fraction of response tokens (those whose
        Value vectors drifted most, by cosine similarity) is recomputed; int(R * ratio) per row.
    cfg_interval: response interval for the unconditional branch of classifier-free
        guidance; None means the same as response_interval.
    cuda_graphs: on CUDA, replay cached (non-prompt-refresh) steps as CUDA graphs. Those steps
        do little arithmetic, so in eager mode Python and kernel launches dominate. Outputs are
        the same; the returned logits then live in a buffer the next such step overwrites.
    compile: run the cached layer through torch.compile, which fuses its many small kernels
        (norms, RoPE, V-verify). Costs compile time (5-10 s per step kind on an H100, once per layout);
        float32 sums may be reordered, so logits can differ in the last bits. Off by default.
    """

    prompt_interval: int = 100
    response_interval: int = 8
    transfer_ratio: float = 0.25
    cfg_interval: int | None = None
    cuda_graphs: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("prompt_interval", "response_interval", "cfg_interval"):
            value = getattr(self, name)
            if value is None and name == "cfg_interval":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(
                    f"CacheConfig.{name} must be an integer >= 1 (refresh every N steps; 1 = every step), "
                    f"got {value!r}."
                )
            object.__setattr__(self, name, int(value))  # numpy / torch integers become plain ints
        for name in ("cuda_graphs", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"CacheConfig.{name} must be True or False, got {getattr(self, name)!r}.")
        ratio = self.transfer_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= ratio <= 1.0:
            raise ValueError(
                "CacheConfig.transfer_ratio must be a number in [0, 1] (fraction of response tokens "
                f"recomputed on partial steps; the paper uses 0.25), got {ratio!r}."
            )
        object.__setattr__(self, "transfer_ratio", float(ratio))

    @property
    def uncond_response_interval(self) -> int:
        return self.cfg_interval or self.response_interval
