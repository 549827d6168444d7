"""Getting a run's inputs onto a machine: datasets (local, Hub, ``s3://``, generated), the split into
training and validation episodes, the tokenizer and the ``--demo`` dataset.

May import: ``data_adapters``, ``steps.cache``, ``steps.sim`` (generated datasets).
"""
