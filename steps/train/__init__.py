"""The trainer (``python -m steps.train``, run by torchrun) and everything around it: its config, the
launch from the flow, model setup, the data loader, schedule, EMA, distributed helpers, checkpoints
(local or S3) and the final export.

Kept import-light: ``steps.train.config`` and ``steps.train.launch`` import no torch (the flow imports
them). May import: ``data_adapters``, ``model_zoo``, ``steps.cache``, ``steps.fetch``,
``steps.registry.tracking`` (metrics).
"""
