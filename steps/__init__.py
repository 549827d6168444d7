"""The work of each flow step, as plain Python importable without Metaflow (docs/architecture.md).

One package per concern; each may import ``model_zoo`` and ``data_adapters``, the cross-cutting helpers
here (``steps.cache``, ``steps.policy``) and the packages its docstring names. ``flows/`` imports only
``steps``. Stable command-line entry points: ``python -m steps.train``, ``python -m steps.promote``,
``python -m steps.metaworld_data``.
"""
