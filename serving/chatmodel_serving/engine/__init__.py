"""The generation engine, by role (this package imports nothing, so `engine.types` stays torch-free):

types.py         SamplingParams, Event, Sink, EngineStats, the engine errors and the EngineClient protocol
                 that both the Engine and the Triton client implement (no torch: metrics and the Triton
                 client import it)
core.py          Engine: the engine thread; each step one packed forward pass (decode tokens + prompt chunks)
scheduler.py     admission: which waiting requests join the running batch this step
sequence.py      Request and Sequence: one request's tokens, incremental detokenisation and stop strings
sampler.py       one token per row: logprobs, logit_bias, penalties, greedy, temperature, min_p, top_k,
                 top_p, batched per row
prefix_cache.py  the KV of recent prompts, reused for prompts that share a prefix
beam.py          beam search (an extension, as in vLLM), run alone through transformers' generate()
kvcache.py       the KV pool: a slot per running row, position p in column p, within the memory budget
attention.py     the model's attention over the pool (registered with transformers), the step's Plan
lora.py          batched multi-LoRA: adapters read and checked, device slots (LRU), per-token-group deltas
"""
