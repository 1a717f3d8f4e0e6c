"""kinlm's data layer: data sources (``sources``), tokenizers (``tokenizers``), and packing/caching/
sampling of token rows (``packing``). Importing this package imports neither torch nor numpy;
``prepare_data``, ``Prepared`` and ``BlockSampler`` are loaded from ``packing`` on first use."""

__all__ = ["prepare_data", "Prepared", "BlockSampler"]


def __getattr__(name):
    if name in __all__:
        from . import packing

        return getattr(packing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
