"""Simulators for demonstrations and closed-loop evaluation, one subpackage each (Meta-World today).

May import: ``data_adapters``, ``steps.cache``.
"""
