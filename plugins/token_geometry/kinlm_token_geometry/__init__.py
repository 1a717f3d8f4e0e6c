"""kinlm plugin token_geometry: the configurable `llama_like` model and the `token_geometry` analyzer."""
