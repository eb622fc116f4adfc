"""The VLM: the embedded tiny Qwen2.5-VL (built in code, no download), its tokenizer and processor, the
loader that serves the embedded default and real local checkpoints alike, and the policy engines
(engines/: transformers and vLLM) that sample from it and score with it."""
