"""Simulators for demonstrations and closed-loop evaluation behind one interface (``base.Simulator``),
one rollout loop (``rollout``) and simulator worker processes (``worker``, ``wire``); one subpackage per
simulator (``metaworld``, ``libero``; ManiSkill3 next).

May import: ``data_adapters``, ``steps.cache``. ``base``, ``rollout``, ``wire`` and ``worker`` import numpy
and the standard library only, so they also load in a simulator's own venv.
"""
