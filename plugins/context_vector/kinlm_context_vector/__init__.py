"""kinlm plugin context_vector: the attention-free context-vector LM (rato-tokyo/new-llm)."""
