"""Our own model implementations, registered with transformers' Auto classes.

Importing this package registers model_type "llada" (dense LLaDA / LLaDA-1.5, and LLaDA-MoE, whose
config.json shares that model_type: the config's MoE keys pick the class), "mmada" and "Dream" (Dream,
Dream-Coder, DreamOn), so `AutoModel.from_pretrained(local_dir)` loads official checkpoints without
remote code; and "llada2_moe" (LLaDA 2.0 / 2.1, block diffusion).
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from .dream import DreamConfig, DreamModel
from .llada import LLaDAConfig, LLaDAModelLM
from .llada2 import LLaDA2MoeConfig, LLaDA2MoeModelLM
from .llada_moe import LLaDAMoEConfig, LLaDAMoEModelLM
from .mmada import MMadaConfig, MMadaModelLM

for _config, _model in (
    (LLaDAConfig, LLaDAModelLM), (DreamConfig, DreamModel), (MMadaConfig, MMadaModelLM), (LLaDA2MoeConfig, LLaDA2MoeModelLM)
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForMaskedLM.register(_config, _model, exist_ok=True)
# Same model_type as dense LLaDA: reached through LLaDAConfig.from_dict, mapped to its model by class.
AutoModel.register(LLaDAMoEConfig, LLaDAMoEModelLM, exist_ok=True)
AutoModelForMaskedLM.register(LLaDAMoEConfig, LLaDAMoEModelLM, exist_ok=True)

__all__ = [
    "DreamConfig",
    "DreamModel",
    "LLaDA2MoeConfig",
    "LLaDA2MoeModelLM",
    "LLaDAConfig",
    "LLaDAModelLM",
    "LLaDAMoEConfig",
    "LLaDAMoEModelLM",
    "MMadaConfig",
    "MMadaModelLM",
]
