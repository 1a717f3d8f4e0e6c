"""kinlm-hamiltonian: the "Hamiltonian LLM" model and its generators as a kinlm plugin.

Importing this package (and ``.plugin``/``.config``) never imports torch.
"""

__version__ = "0.1.0"
