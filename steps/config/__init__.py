"""The run config: command-line values checked in ``start`` and resolved once into one typed,
serializable run config that every later step and training process receives.

May import: ``data_adapters``, ``model_zoo`` (torch-free parts), ``steps.fetch`` (dataset checks),
``steps.registry.tracking`` (reachability), ``steps.sim`` (dataset URIs).
"""
