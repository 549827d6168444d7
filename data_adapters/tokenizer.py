"""Prompt tokenizer (SentencePiece) and the pi0 / pi0.5 prompt formats.

Formats follow openpi's `PaligemmaTokenizer.tokenize`:
- without state in the prompt (pi0, and pi0.5 with discrete_state off, e.g. openpi's pi05_libero):
  BOS + encode(cleaned task) + encode("\\n"): the newline is encoded on its own as the
  "start of answer" token;
- pi0.5 with discrete state: BOS + encode(f"Task: {cleaned}, State: {bins};\\nAction: "), bins =
  digitize(normalized state, linspace(-1, 1, 257)[:-1]) - 1 at the robot's native dims.
cleaned = task.strip() with "_" and newlines replaced by spaces. Tokens are right-padded with id 0
(PaliGemma's <pad>) to max_len; longer prompts are truncated with a warning.

The real tokenizer is PaliGemma's (google/paligemma-3b-pt-224, vocab 257,152). Tests and tiny
models use `train_tiny_tokenizer`, a small model trained offline on robot task strings.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import sentencepiece as spm

STATE_BINS = np.linspace(-1.0, 1.0, 256 + 1)[:-1]
PAD_ID = 0


def clean_task(task: str) -> str:
    return task.strip().replace("_", " ").replace("\n", " ")


def discretize_state(normalized_state: np.ndarray) -> np.ndarray:
    """256 bins over [-1, 1] (values outside land in bins 0 / 255, as np.digitize does)."""
    return np.digitize(np.asarray(normalized_state, dtype=np.float64), bins=STATE_BINS) - 1


def pi05_state_prompt(task: str, normalized_state: np.ndarray) -> str:
    bins = " ".join(str(int(b)) for b in discretize_state(normalized_state))
    return f"Task: {clean_task(task)}, State: {bins};\nAction: "


class PromptTokenizer:
    """SentencePiece tokenizer that turns a task (and optionally the state) into fixed-length tokens."""

    def __init__(self, model_path: str | os.PathLike, max_len: int) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ValueError(f"tokenizer model {str(model_path)!r} does not exist")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {max_len}")
        self.model_path = model_path
        self.max_len = max_len
        self._sp = spm.SentencePieceProcessor(model_proto=model_path.read_bytes())

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode_prompt(self, task: str, state: np.ndarray | None = None) -> list[int]:
        """Unpadded token ids; `state` (normalized, native dims) selects the pi0.5 discrete-state format."""
        if state is not None:
            return self._sp.encode(pi05_state_prompt(task, state), add_bos=True)
        return self._sp.encode(clean_task(task), add_bos=True) + self._sp.encode("\n")

    def __call__(self, task: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return (tokens int64[max_len], mask bool[max_len]); mask is True on real tokens."""
        ids = self.encode_prompt(task, state)
        if len(ids) > self.max_len:
            warnings.warn(
                f"prompt has {len(ids)} tokens, more than max_token_len {self.max_len}; truncating "
                f"(task {task[:60]!r}). Raise max_token_len if this happens often.",
                stacklevel=2,
            )
            ids = ids[: self.max_len]
        tokens = np.full(self.max_len, PAD_ID, dtype=np.int64)
        tokens[: len(ids)] = ids
        mask = np.zeros(self.max_len, dtype=bool)
        mask[: len(ids)] = True
        return tokens, mask

    def decode(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> str:
        ids = [int(t) for t, m in zip(tokens, mask if mask is not None else np.ones(len(tokens), bool)) if m]
        return self._sp.decode(ids)


# Robot task strings for the tiny tokenizer: Meta-World task descriptions and LIBERO / CALVIN style
# instructions, plus the pi0.5 prompt scaffolding.
_METAWORLD_TASKS = (
    "Pick up a nut and place it onto a peg",
    "Dunk the basketball into the basket",
    "Grasp the puck from one bin and place it into another bin",
    "Grasp the cover and close the box with it",
    "Press a button from the top",
    "Bypass a wall and press a button from the top",
    "Press a button",
    "Bypass a wall and press a button",
    "Push a button on the coffee machine",
    "Pull a mug from a coffee machine",
    "Push a mug under a coffee machine",
    "Rotate a dial 180 degrees",
    "Pick a nut out of a peg",
    "Close a door with a revolving joint",
    "Open a door with a revolving joint",
    "Lock the door by rotating the lock clockwise",
    "Unlock the door by rotating the lock counter-clockwise",
    "Push and close a drawer",
    "Open a drawer",
    "Rotate the faucet counter-clockwise",
    "Rotate the faucet clockwise",
    "Hammer a screw on the wall",
    "Insert the gripper into a hole",
    "Press a handle down sideways",
    "Press a handle down",
    "Pull a handle up sideways",
    "Pull a handle up",
    "Pull a lever down 90 degrees",
    "Insert a peg sideways",
    "Pick a puck, bypass a wall and place the puck",
    "Pick and place a puck to a goal",
    "Pick up a puck from a hole",
    "Slide a plate into a cabinet",
    "Slide a plate into a cabinet sideways",
    "Get a plate from the cabinet",
    "Get a plate from the cabinet sideways",
    "Bypass a wall and push a puck to a goal",
    "Push the puck to a goal",
    "Reach a goal position",
    "Bypass a wall and reach a goal",
    "Pick and place a puck onto a shelf",
    "Kick a soccer into the goal",
    "Grasp a stick and pull a box with the stick",
    "Grasp a stick and push a box using the stick",
    "Sweep a puck into a hole",
    "Sweep a puck off the table",
    "Push and open a window",
    "Push and close a window",
    "Unplug a peg sideways",
)
_LIBERO_OBJECTS = (
    "the black bowl",
    "the alphabet soup",
    "the cream cheese",
    "the ketchup",
    "the tomato sauce",
    "the butter",
    "the milk",
    "the orange juice",
    "the bbq sauce",
    "the salad dressing",
    "the wine bottle",
    "the moka pot",
    "the red mug",
    "the white mug",
    "the yellow and white mug",
    "the chocolate pudding",
    "the book",
)
_LIBERO_PLACES = (
    "on the plate",
    "in the basket",
    "on the stove",
    "in the top drawer of the cabinet",
    "on top of the cabinet",
    "on the wine rack",
    "in the tray",
    "on the left plate",
    "in the microwave",
    "on the right side of the caddy",
)
_CALVIN_TASKS = (
    "open the drawer",
    "close the drawer",
    "turn on the lightbulb",
    "turn off the led",
    "push the sliding door to the left",
    "move the slider to the right",
    "lift the red block",
    "stack the blocks",
    "rotate the blue block right",
    "push the pink block into the drawer",
    "place the block in the slider",
)


def tiny_corpus() -> list[str]:
    """Deterministic training sentences for the tiny tokenizer."""
    rng = np.random.default_rng(0)
    lines = list(_METAWORLD_TASKS) + list(_CALVIN_TASKS)
    lines += [f"pick up {obj} and place it {place}" for obj in _LIBERO_OBJECTS for place in _LIBERO_PLACES]
    lines += [f"put {obj} {place}" for obj in _LIBERO_OBJECTS[:8] for place in _LIBERO_PLACES[:5]]
    for i, task in enumerate(lines[:120]):
        state = rng.uniform(-1.0, 1.0, size=4 + i % 5)
        lines.append(pi05_state_prompt(task, state))
    return lines


def train_tiny_tokenizer(out_path: str | os.PathLike, vocab_size: int = 512) -> Path:
    """Train a small SentencePiece (BPE) model offline on `tiny_corpus()`; same bytes on every run.

    Ids follow PaliGemma: pad 0, eos 1, bos 2, unk 3; "\\n" is a single token; digits are split.
    `vocab_size` must stay below the tiny model's 1024 embeddings (the corpus may yield fewer pieces).
    """
    if not 64 <= vocab_size < 1024:
        raise ValueError(f"vocab_size must be in 64..1023 (tiny models embed 1024 ids), got {vocab_size}")
    out_path = Path(out_path)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["\n"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        byte_fallback=True,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model.getvalue())
    return out_path
