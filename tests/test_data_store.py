"""The shard format: round trips, checksums, corrupt and truncated shards, crash safety, appends."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from worldsdk.config import ActionSpec
from worldsdk.data import store as store_module
from worldsdk.data.store import CorruptShardError, DatasetMeta, Episode, EpisodeStore

SPEC = ActionSpec.discrete(4)


def _meta(**overrides) -> DatasetMeta:
    fields = dict(env_id="Fake-v0", game="fake", height=8, width=8, fps=15.0, action_spec=SPEC, frame_chunk=4)
    fields.update(overrides)
    return DatasetMeta(**fields)


def _episode(length: int, seed: int, actions=None) -> Episode:
    rng = np.random.default_rng(seed)
    prompt_ids = np.zeros(length, dtype=np.int16)
    prompt_ids[length // 2 :] = 1
    terminated = np.zeros(length, dtype=bool)
    terminated[-1] = True
    return Episode(
        frames=rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8),
        actions=rng.integers(0, 4, length) if actions is None else actions,
        rewards=rng.normal(size=length).astype(np.float32),
        terminated=terminated,
        truncated=np.zeros(length, dtype=bool),
        prompt_ids=prompt_ids,
        prompts=("fake, classic style", "fake, neon style"),
        styles=("classic", "neon"),
    )


def _write(root, episodes, meta=None):
    store, meta = EpisodeStore(root), meta or _meta()
    with store.writing(meta):
        return [store.append(e, meta, seed=i, policy="random") for i, e in enumerate(episodes)]


def test_round_trip_is_exact(tmp_path):
    episodes = [_episode(11, 0), _episode(4, 1), _episode(9, 2)]
    records = _write(tmp_path, episodes)
    store = EpisodeStore(tmp_path)
    assert [r.id for r in store.verified_records()] == [0, 1, 2]
    for record, original in zip(records, episodes):
        back = store.read(record)
        np.testing.assert_array_equal(back.frames, original.frames)
        np.testing.assert_array_equal(back.actions, original.actions)
        np.testing.assert_array_equal(back.rewards, original.rewards)
        np.testing.assert_array_equal(back.terminated, original.terminated)
        np.testing.assert_array_equal(back.prompt_ids, original.prompt_ids)
        assert back.prompts == original.prompts and back.styles == original.styles
        assert back.frame_prompts()[-1] == "fake, neon style"
    assert records[0].switch_frames == (5,)
    assert records[0].prompts == ("fake, classic style", "fake, neon style")
    # frames come back chunk by chunk too
    chunks = store.read_frame_chunks(records[0], [1, 2])
    np.testing.assert_array_equal(chunks[2], episodes[0].frames[8:11])
    assert store.meta() == _meta()


def test_shards_load_without_pickle(tmp_path):
    records = _write(tmp_path, [_episode(5, 0)])
    with np.load(tmp_path / records[0].shard, allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)


def test_dict_actions_round_trip(tmp_path):
    spec = ActionSpec.dict(move=ActionSpec.discrete(3), aim=ActionSpec.box((2,)))
    actions = {"move": np.arange(6) % 3, "aim": np.linspace(-1, 1, 12, dtype=np.float32).reshape(6, 2)}
    records = _write(tmp_path, [_episode(6, 0, actions=actions)], _meta(action_spec=spec))
    back = EpisodeStore(tmp_path).read(records[0])
    assert set(back.actions) == {"move", "aim"}
    np.testing.assert_array_equal(back.actions["aim"], actions["aim"])
    assert EpisodeStore(tmp_path).meta().action_spec == spec


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_shard_is_named_and_skipped(tmp_path, caplog, damage):
    records = _write(tmp_path, [_episode(8, 0), _episode(8, 1), _episode(8, 2)])
    path = tmp_path / records[1].shard
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        path.unlink()
    with caplog.at_level(logging.WARNING):
        kept = EpisodeStore(tmp_path).verified_records()
    assert [r.id for r in kept] == [0, 2]
    assert "ep_000001.npz" in caplog.text
    assert {"truncate": "truncated", "flip": "corrupt", "delete": "missing"}[damage] in caplog.text


def test_unreadable_shard_raises_with_its_name(tmp_path):
    records = _write(tmp_path, [_episode(8, 0)])
    (tmp_path / records[0].shard).write_bytes(b"not a zip")
    with pytest.raises(CorruptShardError, match="ep_000000.npz"):
        EpisodeStore(tmp_path).read(records[0])


def test_crash_before_index_update_keeps_dataset_readable(tmp_path, monkeypatch):
    _write(tmp_path, [_episode(6, 0)])
    original = store_module.write_json_atomic

    def crash(path, obj):
        raise KeyboardInterrupt("killed while updating the index")

    monkeypatch.setattr(store_module, "write_json_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, [_episode(6, 1)])
    monkeypatch.setattr(store_module, "write_json_atomic", original)
    store = EpisodeStore(tmp_path)
    assert [r.id for r in store.verified_records()] == [0]  # the orphan shard ep_000001 is ignored
    assert (tmp_path / "episodes" / "ep_000001.npz").exists()
    records = _write(tmp_path, [_episode(6, 2)])  # appending never overwrites the orphan
    assert records[0].id == 2
    assert [r.id for r in EpisodeStore(tmp_path).verified_records()] == [0, 2]


def test_crash_while_writing_shard_leaves_only_a_temp_file(tmp_path, monkeypatch):
    _write(tmp_path, [_episode(6, 0)])

    def crash(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(store_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, [_episode(6, 1)])
    monkeypatch.undo()
    assert list((tmp_path / "episodes").glob(".*.tmp-*"))  # the half-written shard
    assert [r.id for r in EpisodeStore(tmp_path).verified_records()] == [0]
    _write(tmp_path, [_episode(6, 2)])  # the next writer cleans it up
    assert not list((tmp_path / "episodes").glob(".*.tmp-*"))
    assert [r.id for r in EpisodeStore(tmp_path).verified_records()] == [0, 1]


def test_append_requires_matching_meta(tmp_path):
    _write(tmp_path, [_episode(6, 0)])
    with pytest.raises(ValueError, match="height"):
        _write(tmp_path, [_episode(6, 1)], _meta(height=16))


def test_second_writer_is_refused(tmp_path):
    store, meta = EpisodeStore(tmp_path), _meta()
    with store.writing(meta):
        with pytest.raises(RuntimeError, match="another process"):
            with EpisodeStore(tmp_path).writing(meta):
                pass
