"""Evaluation of an exported model: offline metrics on held-out episodes (``offline``), closed-loop
success rates in a simulator (``closed_loop``), plots (``plots``); ``export_eval`` runs them all.

May import: ``data_adapters``, ``model_zoo``, ``steps.policy``, ``steps.sim``.
"""
