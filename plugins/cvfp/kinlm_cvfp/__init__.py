"""kinlm-cvfp: the Context Vector Fixed-Point LM, its two-phase curriculum, the diversity
regularizer and the effective-rank / convergence / identity analyzers as a kinlm plugin.

Importing this package (and ``.plugin``/``.config``) never imports torch.
"""

__version__ = "0.1.0"
