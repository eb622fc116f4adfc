"""Policy engines behind one Protocol (base.py): transformers (hf.py, CPU or GPU) and vLLM (issue 7)."""
