"""kinlm plugin vt_t5: VT embeddings on any model, T5 presets, the hybrid curriculum's tasks and phases,
the representation regularizer and the linear probe."""
