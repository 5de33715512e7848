"""Reading Arrow shards: the zero-copy memory-mapped view, windows across shards, the window sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import support
from gpt1cli.data.shards import ShardDataset, WindowSampler, eval_windows
from gpt1cli.errors import Gpt1Error


@pytest.fixture(scope="module")
def data(assets):
    return ShardDataset(assets.shards)


# ---------------------------------------------------------------------------------------------
# Zero-copy reader


def _mapping_of(address: int) -> tuple[int, int, int, str] | None:
    """(start, end, file offset, path) of the mapping of this process holding ``address``."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                path = parts[5].strip() if len(parts) > 5 else ""
                return lo, hi, int(parts[2], 16), path
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")
def test_train_shard_view_is_zero_copy_into_the_mapped_file(assets):
    data = ShardDataset(assets.shards)  # a fresh dataset: its own mapping
    arr = data.train.arrays[0]
    path = assets.shards / "train_00000.arrow"
    assert arr.dtype == np.uint16
    assert arr.flags.writeable is False
    assert arr.flags.owndata is False
    with pytest.raises(ValueError):
        arr[0] = 1
    # The base chain ends in a pyarrow buffer, not a numpy copy.
    base = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert not isinstance(base, np.ndarray) or not base.flags.owndata

    # Where the tokens start inside the file, found with an independent mapping.
    with pa.memory_map(str(path), "r") as source:
        whole = source.read_buffer(source.size())
        column = pa.ipc.open_file(pa.BufferReader(whole)).get_batch(0).column(0)
        file_offset = column.buffers()[1].address - whole.address + column.offset * 2
        expected = column.to_numpy().copy()
    assert np.array_equal(arr, expected)

    address = arr.__array_interface__["data"][0]
    mapping = _mapping_of(address)
    assert mapping is not None, "the array's memory is not in any mapping"
    lo, hi, map_offset, map_path = mapping
    assert Path(map_path).resolve() == path.resolve(), f"the array lives in {map_path!r}, not in the shard file"
    assert address - lo + map_offset == file_offset
    assert address + arr.nbytes <= hi


def test_every_split_array_is_a_read_only_view(data):
    for split in (data.train, data.val):
        for arr in split.arrays:
            assert not arr.flags.writeable and not arr.flags.owndata
        assert split.tokens == int(sum(len(a) for a in split.arrays))
        assert list(split.offsets) == list(np.cumsum([0] + [len(a) for a in split.arrays]))


# ---------------------------------------------------------------------------------------------
# Reading windows


def test_windows_spanning_shard_boundaries_equal_the_concatenated_tokens(assets, data):
    stream = support.split_tokens(assets.shards, "train").astype(np.int64)
    assert len(stream) == data.train.tokens
    boundaries = [int(b) for b in data.train.offsets[1:-1]]
    assert boundaries, "need more than one train shard"
    for boundary in boundaries:
        for start in (boundary - 3, boundary - 1, boundary):
            window = data.train.read(start, 65)
            assert window.dtype == np.int64
            assert np.array_equal(window, stream[start : start + 65])
    # A window longer than a shard spans three of them.
    long_start = boundaries[0] - 10
    long = data.train.read(long_start, support.TOKENS_PER_SHARD + 20)
    assert np.array_equal(long, stream[long_start : long_start + support.TOKENS_PER_SHARD + 20])
    # Whole split, and its last token.
    assert np.array_equal(data.train.read(0, data.train.tokens), stream)
    assert np.array_equal(data.train.read(data.train.tokens - 1, 1), stream[-1:])


def test_read_outside_the_split_raises(data):
    with pytest.raises(IndexError):
        data.train.read(data.train.tokens - 5, 6)
    with pytest.raises(IndexError):
        data.train.read(-1, 3)


def test_read_returns_a_copy_not_the_mapped_memory(data):
    window = data.train.read(5, 10)
    assert window.flags.writeable
    window[:] = 0  # must not touch the read-only mapping
    assert data.train.read(5, 10).any()


# ---------------------------------------------------------------------------------------------
# WindowSampler


def test_sampler_is_a_pure_function_of_seed_and_step(data):
    a = WindowSampler(data.train, 64, seed=7)
    b = WindowSampler(data.train, 64, seed=7)
    for step in (0, 1, 5, 1000):
        assert np.array_equal(a.starts(step, 8), b.starts(step, 8))
    # order of calls does not matter (stateless)
    later_first = a.starts(3, 8)
    a.starts(0, 8)
    assert np.array_equal(a.starts(3, 8), later_first)
    assert not np.array_equal(a.starts(0, 8), a.starts(1, 8))
    assert not np.array_equal(a.starts(0, 8), WindowSampler(data.train, 64, seed=8).starts(0, 8))


def test_sampler_windows_are_n_ctx_plus_one_raw_tokens(assets, data):
    stream = support.split_tokens(assets.shards, "train").astype(np.int64)
    n_ctx = 64
    sampler = WindowSampler(data.train, n_ctx, seed=0)
    seen_spanning = False
    for step in range(40):
        starts = sampler.starts(step, 16)
        assert starts.min() >= 0 and starts.max() <= data.train.tokens - (n_ctx + 1)
        windows = sampler.windows(starts)
        assert windows.shape == (16, n_ctx + 1) and windows.dtype == np.int64
        for start, window in zip(starts, windows):
            assert np.array_equal(window, stream[start : start + n_ctx + 1])
            shard = np.searchsorted(data.train.offsets, start, side="right") - 1
            seen_spanning |= start + n_ctx + 1 > data.train.offsets[shard + 1]
    assert seen_spanning, "no sampled window crossed a shard boundary"


def test_sampler_rejects_a_split_shorter_than_one_window(data):
    with pytest.raises(Gpt1Error, match="fewer than one window"):
        WindowSampler(data.val, data.val.tokens, seed=0)


def test_eval_windows_cover_the_split_without_overlap(data):
    n_ctx = 64
    windows = eval_windows(data.val, n_ctx)
    # consecutive windows share exactly one token (the last target is the next input)
    for (s0, n0), (s1, _) in zip(windows, windows[1:]):
        assert n0 == n_ctx + 1 and s1 == s0 + n_ctx
    last_start, last_len = windows[-1]
    assert last_start + last_len == data.val.tokens
    assert sum(n - 1 for _, n in windows) == data.val.tokens - 1
    capped = eval_windows(data.val, n_ctx, max_tokens=100)
    assert sum(n - 1 for _, n in capped) == 100

