"""A tiny randomly initialised Llama with the shipped SmolLM2 tokenizer and chat template: the real engine
and HTTP server, but generation fast enough to send thousands of fuzzed requests in CI. Its short context
(128 tokens) bounds every request, so no generated max_tokens or n can make one slow."""

from __future__ import annotations

from pathlib import Path

CONTEXT = 128


def write_tiny_model(folder: Path, context: int = CONTEXT, hidden_size: int = 64) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from chatmodel_serving.models import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source("builtin://smollm2-135m"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
