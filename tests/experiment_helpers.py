"""The organism's language model as a standalone text-only LLM (LlamaForCausalLM + its tokenizer)."""

from __future__ import annotations

from pathlib import Path


def organism_llm(out: Path) -> Path:
    """Save the organism LVLM's decoder + head as a text-only causal LM directory (same vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    from ingest.organism.train import WEIGHTS_DIR

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    lvlm = LlavaForConditionalGeneration.from_pretrained(str(WEIGHTS_DIR), dtype=torch.float32)
    cfg = lvlm.config.get_text_config()
    llm = AutoModelForCausalLM.from_config(cfg)
    llm.model.load_state_dict(lvlm.model.language_model.state_dict())
    llm.lm_head.load_state_dict(lvlm.lm_head.state_dict())
    llm.generation_config = lvlm.generation_config
    llm.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(WEIGHTS_DIR)).save_pretrained(str(out))
    return out
