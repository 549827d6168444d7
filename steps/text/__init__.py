"""Text SFT of a Hugging Face causal LM through the same flow: rows and tokenization (``data``), the
trainer's task (``train_task``), token statistics (``stats``), evaluation (``evaluate``) and the generating
pyfunc (``pyfunc``, ``model_logging``).

May import: ``data_adapters``, ``steps.train`` (the TrainTask interface), ``steps.registry``.
"""
