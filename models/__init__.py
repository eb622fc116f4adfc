"""The VLM: the embedded tiny Qwen2.5-VL (built in code, no download), its tokenizer and processor,
and the loader that serves the embedded default and real local checkpoints alike."""
