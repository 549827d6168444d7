"""Prompt formats (pi0 / pi0.5), padding, truncation and the tiny SentencePiece model."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece as spm

from data_adapters.tokenizer import PromptTokenizer, discretize_state, pi05_state_prompt, train_tiny_tokenizer


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny.model")


@pytest.fixture(scope="module")
def sp(model_path):
    return spm.SentencePieceProcessor(model_file=str(model_path))


def test_tiny_tokenizer_is_deterministic_small_and_paligemma_ids(model_path, tmp_path):
    again = train_tiny_tokenizer(tmp_path / "again.model")
    assert again.read_bytes() == model_path.read_bytes()
    assert model_path.stat().st_size < 20_000
    processor = spm.SentencePieceProcessor(model_file=str(model_path))
    assert processor.get_piece_size() < 1024
    assert (processor.pad_id(), processor.eos_id(), processor.bos_id(), processor.unk_id()) == (0, 1, 2, 3)
    assert len(processor.encode("\n")) == 1
    assert 3 not in processor.encode("Pick up a nut and place it onto a peg")  # no <unk> for corpus words
    with pytest.raises(ValueError, match=r"vocab_size must be in 64\.\.1023.*got 1024"):
        train_tiny_tokenizer(tmp_path / "big.model", vocab_size=1024)


def test_pi0_format_bos_task_newline_and_padding(model_path, sp):
    tokenizer = PromptTokenizer(model_path, max_len=48)
    tokens, mask = tokenizer("  pick_up the\nblack bowl \n")
    expected = [sp.bos_id(), *sp.encode("pick up the black bowl"), *sp.encode("\n")]
    assert tokens.dtype == np.int64 and mask.dtype == np.bool_ and tokens.shape == mask.shape == (48,)
    assert tokens[: len(expected)].tolist() == expected
    assert mask.sum() == len(expected) and mask[: len(expected)].all()
    assert (tokens[len(expected) :] == 0).all()
    assert tokenizer.decode(tokens, mask) == "pick up the black bowl\n"


def test_pi05_discrete_state_format(model_path, sp):
    tokenizer = PromptTokenizer(model_path, max_len=200)
    state = np.array([-1.0, 0.0, 0.999, 1.0, -0.5])
    tokens, mask = tokenizer("Open a drawer", state)
    text = "Task: Open a drawer, State: 0 128 255 255 64;\nAction: "
    assert pi05_state_prompt("Open a drawer", state) == text
    assert tokens[: mask.sum()].tolist() == [sp.bos_id(), *sp.encode(text)]
    assert tokenizer.decode(tokens, mask) == text


def test_state_bins_match_numpy_digitize():
    state = np.linspace(-1.2, 1.2, 97)
    expected = np.digitize(state, np.linspace(-1, 1, 257)[:-1]) - 1
    np.testing.assert_array_equal(discretize_state(state), expected)
    assert discretize_state(np.array([-1.0, -1 + 2 / 256, 1.0])).tolist() == [0, 1, 255]


def test_truncation_warns_and_fills_the_mask(model_path):
    tokenizer = PromptTokenizer(model_path, max_len=8)
    with pytest.warns(UserWarning, match=r"more than max_token_len 8; truncating"):
        tokens, mask = tokenizer("pick up the alphabet soup and place it in the basket")
    assert mask.all() and tokens.shape == (8,) and tokens[0] == 2


def test_missing_model_file(tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer model .*nope.model' does not exist"):
        PromptTokenizer(tmp_path / "nope.model", max_len=48)
