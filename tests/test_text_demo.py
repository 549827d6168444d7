"""The offline text demo (steps/text/demo.py): the tiny model and tokenizer built locally and cached, the
shipped chat rows, and what ``start`` resolves for ``--config_type text_sft --demo``.

The demo through the whole flow is ``tests/test_text_flow.py::test_text_demo_flow_end_to_end_registers_a_generating_model``.
"""

from __future__ import annotations

import json

import pytest

from steps.config.validate import validate_run_inputs
from steps.text import data as text_data
from steps.text import demo


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return demo.build_demo_model(tmp_path_factory.mktemp("demo_cache"))


def test_start_resolves_the_demo_model_and_the_shipped_rows(tmp_path):
    rc = validate_run_inputs(config_type="text_sft", demo=True, tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert rc.kind == "text" and rc.model.pretrained == demo.DEMO_MODEL == "demo://tiny_chat_lm"
    assert (rc.data.dataset, rc.data.dataset_kind) == (demo.DEMO_DATASET, "demo")
    assert rc.data.tokenizer is None  # the model folder's own tokenizer, as for --pretrained
    # Without --demo the model is still required, and the message says how to get the demo one.
    with pytest.raises(ValueError, match=r"--pretrained: config type 'text_sft' names no model.*--demo"):
        validate_run_inputs(config_type="text_sft", tracking_uri=f"sqlite:///{tmp_path}/m.db")


def test_shipped_rows_are_chat_rows_with_held_out_ones():
    rows = text_data.read_rows(demo.DEMO_ROWS, str(demo.DEMO_ROWS))
    assert text_data.row_format(rows) == "chat" and 30 <= len(rows) <= 100
    assert all(any(m["role"] == "assistant" for m in r["messages"]) for r in rows)
    train, val = text_data.split_rows(len(rows), 0.05, 0)  # text_sft's val_fraction
    assert len(val) >= 2 and not set(train) & set(val)


def test_demo_model_is_a_hugging_face_folder_built_once(built, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from steps.text.train_task import load_tokenizer

    files = {p.name for p in built.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in built.iterdir())  # safetensors only
    assert demo.build_demo_model(built.parents[1]) == built  # cached by its key: no rebuild
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no staging folder left

    # The path every --pretrained folder takes: the trainer's tokenizer loader, AutoModelForCausalLM.
    tok = load_tokenizer(str(built))
    assert tok.chat_template and tok.eos_token == "<|end|>" and tok.pad_token_id is not None
    text = "Any text encodes, even ünïcode and words the rows never had: zyzzyva."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte level: no unknowns
    model = AutoModelForCausalLM.from_pretrained(built, use_safetensors=True)
    assert model.config.vocab_size == len(tok) and model.config.num_hidden_layers == 2

    # Chat rows tokenize with the loss on the answers only, through the same code as training.
    rows = text_data.read_rows(demo.DEMO_ROWS, "demo")
    ex = text_data.tokenize_rows(tok, rows, [0], max_seq_len=512, truncation=False)[0]
    answer = tok.decode([i for i, label in zip(ex.input_ids, ex.labels, strict=True) if label != -100])
    assert answer.startswith(rows[0]["messages"][-1]["content"]) and "<|user|>" not in answer
    with torch.no_grad():
        out = model.generate(torch.tensor([ex.input_ids[:8]]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= 11


def test_the_build_is_deterministic(built, tmp_path):
    """Another cache (another machine) builds byte-identical tokenizer and weights."""
    again = demo.build_demo_model(tmp_path)
    assert again.name == built.name
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (built / name).read_bytes(), name
    assert json.loads((again / "config.json").read_text())["hidden_size"] == demo.MODEL_CONFIG["hidden_size"]


def test_text_model_card_names_data_base_model_and_example(tmp_path):
    from data_adapters.text_config import TextConfigType
    from steps.registry.register import lineage_tags
    from steps.text.model_logging import write_text_model_card

    (tmp_path / "config_type.json").write_text(json.dumps(TextConfigType().to_dict()))
    (tmp_path / "vla_sft_export.json").write_text(json.dumps({"base_model": demo.DEMO_MODEL, "finetune": "full",
                                                              "step": 40}))  # fmt: skip
    tags = lineage_tags(lineage_id="L", pathspec="SFTFlow/1", config_type="text_sft", dataset=demo.DEMO_DATASET,
                        dataset_revision=None, dataset_fingerprint="abcd", base_checkpoint=demo.DEMO_MODEL,
                        finetune="full", git_commit=None)  # fmt: skip
    card = write_text_model_card(tmp_path, metrics={"val_loss": 6.46}, lineage=tags).read_text()
    lines = card.splitlines()
    assert lines[0] == "# text_sft causal LM" and "- dataset: demo://chat_demo (fingerprint abcd)" in lines
    assert (
        "- base model: demo://tiny_chat_lm; fine-tuning: full, step 40" in lines
        and "- val_loss: 6.46" in lines
    )
    body = json.loads(card.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert (
        body["dataframe_records"][0]["messages"][0]["role"] == "user"
        and body["params"]["max_new_tokens"] == 64
    )
