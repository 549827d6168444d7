"""MLflow: where and how runs are tracked (``tracking``), logging the model as a pyfunc
(``model_logging``, ``pyfunc``), registering it once per lineage (``register``) and promoting a version
behind gates (``promote``).

May import: ``data_adapters``, ``steps.policy`` (inside the pyfunc).
"""
