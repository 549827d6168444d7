"""steps.sim.generated_cache: a generated dataset is made once per spec, and a failed or lost generation
leaves nothing under its key (the simulators' own fetch tests cover it with real demonstrations)."""

from __future__ import annotations

import pytest

from steps.sim.generated_cache import generate_once, spec_cache_key


def _writer(calls: list):
    def generate(folder):
        calls.append(folder)
        folder.mkdir()
        (folder / "data.bin").write_bytes(b"x" * 10)
        (folder / "done.json").write_text("{}")

    return generate


def test_generated_once_then_found_again(tmp_path):
    calls, lines = [], []
    first = generate_once(tmp_path, "k1", "done.json", _writer(calls), label="sim", log=lines.append)
    again = generate_once(tmp_path, "k1", "done.json", _writer(calls), label="sim", log=lines.append)
    assert first == again == tmp_path / "k1" and len(calls) == 1
    assert (first / "data.bin").read_bytes() == b"x" * 10
    assert lines == [f"[sim] cached: {first}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1"]  # no staging folder left


def test_a_failed_generation_leaves_nothing_and_the_next_call_generates(tmp_path):
    def crash(folder):
        folder.mkdir()
        (folder / "data.bin").write_bytes(b"half")
        raise RuntimeError("simulator died")

    with pytest.raises(RuntimeError, match="simulator died"):
        generate_once(tmp_path, "k1", "done.json", crash, label="sim", log=print)
    assert list(tmp_path.iterdir()) == []
    calls = []
    generate_once(tmp_path, "k1", "done.json", _writer(calls), label="sim", log=print)
    assert len(calls) == 1 and (tmp_path / "k1" / "done.json").is_file()


def test_losing_the_race_to_a_finished_winner_uses_the_winner(tmp_path):
    def generate_while_another_finishes(folder):
        _writer([])(tmp_path / "k1")  # the other process renamed its finished dataset into place meanwhile
        _writer([])(folder)

    path = generate_once(tmp_path, "k1", "done.json", generate_while_another_finishes, label="sim", log=print)
    assert path == tmp_path / "k1" and sorted(p.name for p in tmp_path.iterdir()) == ["k1"]


def test_the_key_names_the_spec_and_changes_with_any_field_or_the_generator():
    spec = {"tasks": ["a", "b"], "episodes": 3, "resolution": 64, "seed": 0}
    key = spec_cache_key("mt", spec, 1)
    assert key.startswith("mt-2tasks-3ep-64px-") and key == spec_cache_key("mt", dict(spec), 1)
    assert len({key, spec_cache_key("mt", {**spec, "seed": 1}, 1), spec_cache_key("mt", spec, 2)}) == 3
