"""Normalization statistics: exact quantiles and moments of exactly what training normalizes (every
timestep of every action chunk, after the delta transform), streamed with bounded memory and cached.

``norm_stats`` is the step; ``numeric_columns`` reads the parquet columns; ``chunk_blocks`` turns
episodes into blocks of chunk values; ``chunk_stats`` and ``order_statistics`` compute the exact
statistics. May import: ``data_adapters``, ``steps.cache``, ``steps.fetch``.
"""
