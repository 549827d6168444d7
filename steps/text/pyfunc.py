"""A registered text model as an MLflow pyfunc that generates, logged as code (models-from-code).

MLflow runs this file to build the model (no pickle). The artifact ``export`` is the training export
(``save_pretrained`` folder, safetensors). Input: a DataFrame (or list of dicts / a dict) with a
``prompt`` column (str) or a ``messages`` column (chat list, rendered with the tokenizer's chat
template); params ``max_new_tokens`` (default 64), ``temperature`` (0 = greedy). Output: one generated
string per row. Only mlflow, pandas, torch and transformers are imported (no project code needed to serve).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TextGenerationModel(PythonModel):
    def load_context(self, context) -> None:
        self.load(context.artifacts["export"])

    def load(self, folder: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()

    # Type hints: MLflow warns on every load without them; with pd.DataFrame it derives no schema and leaves
    # the input as given (rows may also come as a dict or a list of dicts, handled below).
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        import torch

        params = dict(params or {})
        max_new = int(params.get("max_new_tokens", 64))
        temperature = float(params.get("temperature", 0.0))
        if hasattr(model_input, "to_dict"):
            records = model_input.to_dict(orient="records")
        elif isinstance(model_input, Mapping):
            records = [model_input]
        else:
            records = list(model_input)
        out = []
        for i, rec in enumerate(records):
            if rec.get("messages") is not None:
                prompt = self.tokenizer.apply_chat_template(list(rec["messages"]), tokenize=False,
                                                            add_generation_prompt=True)  # fmt: skip
            elif rec.get("prompt") is not None:
                prompt = (self.tokenizer.bos_token or "") + str(rec["prompt"])
            else:
                raise ValueError(
                    f"row {i}: needs a 'prompt' (str) or 'messages' (chat list) column; has {sorted(rec)}"
                )
            ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            sample = (
                {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            )
            with torch.no_grad():
                gen = self.model.generate(ids, max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id,
                                          **sample)  # fmt: skip
            out.append(self.tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
        return out


mlflow.models.set_model(TextGenerationModel())
