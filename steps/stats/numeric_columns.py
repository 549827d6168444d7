"""Numeric columns of LeRobot data files, straight from parquet, for the statistics step.

Only the state and action columns are read (never images or video), one data file at a time, without
importing torch. Values stay float32 when stored so (4 bytes a value); the statistics engine works in
float64 block by block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np


def episode_source(meta, selected, state_keys, action_keys, *, keep_bytes: int) -> Callable[[], Iterator]:
    """A re-iterable source of episodes (state, actions in float64), reading one data file at a time.

    Yields one run of episodes per data file. The numeric columns of small selections are kept in memory
    after the first pass (they are tiny next to images: 4 bytes per value as stored); larger ones are read again
    from the parquet files on each pass.
    """
    from steps.stats.chunk_stats import Episodes

    keys = list(dict.fromkeys([*state_keys, *action_keys]))
    offsets, width = {}, 0
    for key in keys:
        offsets[key] = width
        width += meta.feature_dim(key)

    def columns(ks):
        cols = np.concatenate([np.arange(meta.feature_dim(k)) + offsets[k] for k in ks])
        contiguous = np.array_equal(cols, np.arange(cols[0], cols[0] + cols.size))
        return slice(int(cols[0]), int(cols[0]) + cols.size) if contiguous else cols

    state_cols, action_cols = columns(state_keys), columns(action_keys)
    by_file: dict[str, list] = {}
    for ep in selected:
        by_file.setdefault(ep.data_path, []).append(ep)

    def read() -> Iterator:
        for rel, eps in by_file.items():
            values = read_numeric_file(meta, rel, eps, keys)
            yield Episodes(
                np.array([ep.index for ep in eps]),
                np.array([ep.length for ep in eps]),
                values[:, state_cols],
                values[:, action_cols],
            )

    if sum(ep.length for ep in selected) * width * 4 > keep_bytes:
        return read
    kept: list = []

    def read_once() -> Iterator:
        if kept:
            yield from kept
            return
        for run in read():
            kept.append(run)
            yield run

    return read_once


def read_numeric_file(meta, rel: str, episodes, keys: Sequence[str]) -> np.ndarray:
    """The numeric ``keys`` of the given episodes of one data file, rows in episode order.

    Returns ``[sum of lengths, sum of dims]``, float32 when every column is float32 (LeRobot's usual
    dtype; the engine works in float64 block by block), else float64. Only those parquet columns are
    read. (``data_adapters.lerobot_reader.read_numeric`` does the same per episode but imports torch,
    which costs seconds, and converts episode by episode.)

    Raises:
        DatasetFormatError: missing or corrupt file, missing column, too few rows, rows of another
            episode, or NaN/inf (naming key, episode and frame).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from data_adapters.lerobot_format import DatasetFormatError

    path = meta.root / rel
    names = ", ".join(str(ep.index) for ep in episodes[:5]) + (", ..." if len(episodes) > 5 else "")
    where = f"episode {names}" if len(episodes) == 1 else f"episodes {names}"
    if not path.is_file():
        raise DatasetFormatError(f"missing data file {path} ({where})")
    try:
        parquet = pq.ParquetFile(path)
        present = set(parquet.schema_arrow.names)
        missing = [k for k in keys if k not in present]
        if missing:
            raise DatasetFormatError(f"columns {missing} missing from data file {path} ({where}); "
                                     f"columns: {sorted(present)}")  # fmt: skip
        extra = ["episode_index"] if "episode_index" in present else []
        # ParquetFile.read skips the dataset layer of read_table: ~3x faster on files with one row
        # group per episode (LeRobot's layout).
        table = parquet.read(columns=[*keys, *extra])
    except (OSError, pa.ArrowException) as err:
        raise DatasetFormatError(f"corrupt parquet file {path} ({where}): {err}") from err
    rows = table.num_rows
    starts = np.array([ep.row_start for ep in episodes])
    stops = np.array([ep.row_stop for ep in episodes])
    if (stops > rows).any():
        ep = episodes[int(np.argmax(stops > rows))]
        raise DatasetFormatError(f"data file {path} has {rows} rows but episode {ep.index} needs rows "
                                 f"{ep.row_start}..{ep.row_stop - 1} (truncated file?)")  # fmt: skip
    if "episode_index" in extra:
        owner = table.column("episode_index").to_numpy()
        indices = np.array([ep.index for ep in episodes])
        wrong = (owner[starts] != indices) | (owner[stops - 1] != indices)
        if wrong.any():
            ep = episodes[int(np.argmax(wrong))]
            raise DatasetFormatError(f"rows {ep.row_start}..{ep.row_stop - 1} of {path} are not episode "
                                     f"{ep.index} (episode metadata does not match the data file)")  # fmt: skip
    contiguous = bool((starts[1:] == stops[:-1]).all())
    picked = slice(int(starts[0]), int(stops[-1])) if contiguous else np.concatenate(
        [np.arange(a, b) for a, b in zip(starts, stops)]
    )  # fmt: skip
    columns, float32 = [], True
    for key in keys:
        column = table.column(key).combine_chunks()
        if column.null_count:
            raise DatasetFormatError(f"column {key!r} of {path} has {column.null_count} null values")
        while (
            pa.types.is_list(column.type)
            or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)
        ):
            column = pc.list_flatten(column)
        flat = column.to_numpy(zero_copy_only=False)
        dim = meta.feature_dim(key)
        if flat.size != rows * dim:
            raise DatasetFormatError(f"column {key!r} of {path} holds {flat.size} values for "
                                     f"{rows} rows; info.json says {dim} per row")  # fmt: skip
        columns.append(flat.reshape(rows, dim)[picked])
        float32 &= flat.dtype == np.float32
    values = np.concatenate(columns, axis=1, dtype=np.float32 if float32 else np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        pos = int(np.searchsorted(np.cumsum(stops - starts), row, side="right"))
        ep = episodes[pos]
        offsets = np.cumsum([0] + [meta.feature_dim(k) for k in keys])
        k = int(np.searchsorted(offsets, col, side="right")) - 1
        local = row - int(np.sum((stops - starts)[:pos]))
        frame = local
        if "frame_index" in present:  # read only now, to name the frame as the dataset numbers it
            frame = int(parquet.read(columns=["frame_index"]).column(0)[ep.row_start + local].as_py())
        raise DatasetFormatError(f"non-finite value {values[row, col]} in {keys[k]!r}[{col - offsets[k]}] at "
                                 f"episode {ep.index}, frame {frame} ({path})")  # fmt: skip
    return values
