"""The built-in model families, one module each (``cnn``, ``vit``, ``uwox`` / ``unit``).

Each module turns a run config into its model and declares its :class:`~fedvlp.core.models.family.Family`;
:mod:`fedvlp.core.models.registry` registers them. This package imports nothing by itself, so
that a family module can be imported without the others.
"""
