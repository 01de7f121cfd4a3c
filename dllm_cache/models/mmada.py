"""MMaDA's language backbone: LLaDA over a joint text + image-token vocabulary (text generation path).

Facts from Gen-Verse/MMaDA `models/modeling_mmada.py`: `MMadaModelLM` subclasses the LLaDA
`LLaDAModelLM` unchanged (same module names and state-dict keys, `model.transformer.*`), with
`MMadaConfig` (model_type "mmada") adding `llm_vocab_size`, `codebook_size`, `num_vq_tokens`,
`num_new_special_tokens` and `new_vocab_size` (the text vocabulary followed by the image VQ codes) to
the LLaDA keys. Text generation (`mmu_generate`) is LLaDA's semi-autoregressive low-confidence
remasking over the whole joint vocabulary, which is what `dllm_cache.sampling.generate` does for this class.
Image generation (`t2i_generate`, MaskGIT over VQ tokens) needs the VQ model and is not provided here.
"""

from __future__ import annotations

from .llada import LLaDAConfig, LLaDAModelLM


class MMadaConfig(LLaDAConfig):
    model_type = "mmada"

    def __init__(
        self,
        llm_vocab_size: int | None = None,
        codebook_size: int | None = None,
        num_vq_tokens: int | None = None,
        num_new_special_tokens: int | None = None,
        new_vocab_size: int | None = None,
        **kwargs,
    ):
        self.llm_vocab_size = llm_vocab_size
        self.codebook_size = codebook_size
        self.num_vq_tokens = num_vq_tokens
        self.num_new_special_tokens = num_new_special_tokens
        self.new_vocab_size = new_vocab_size
        super().__init__(**kwargs)
        width = self.embedding_size or self.vocab_size
        if new_vocab_size is not None and new_vocab_size > width:
            raise ValueError(
                f"MMadaConfig: new_vocab_size={new_vocab_size} (text + image tokens) exceeds the embedding width "
                f"{width} (embedding_size / vocab_size); the checkpoint's config.json is inconsistent."
            )


class MMadaModelLM(LLaDAModelLM):
    """LLaDA with MMaDA's config; logits (batch, seq, embedding width) over text and image tokens."""

    config_class = MMadaConfig
