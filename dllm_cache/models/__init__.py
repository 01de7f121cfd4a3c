"""Our own LLaDA and Dream implementations, registered with transformers' Auto classes.

Importing this package registers model_type "llada" and "Dream", so
`AutoModel.from_pretrained(local_dir)` loads official checkpoints without remote code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from .dream import DreamConfig, DreamModel
from .llada import LLaDAConfig, LLaDAModelLM

for _config, _model in ((LLaDAConfig, LLaDAModelLM), (DreamConfig, DreamModel)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForMaskedLM.register(_config, _model, exist_ok=True)

__all__ = ["DreamConfig", "DreamModel", "LLaDAConfig", "LLaDAModelLM"]
