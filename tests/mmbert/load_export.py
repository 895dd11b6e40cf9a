"""Load an MDS export as mmBERT's trainer does, with mosaicml-streaming itself; run in `.venv-mds` (make setup).

    .venv-mds/bin/python tests/mmbert/load_export.py EXPORT MAX_SEQ_LEN SAMPLES_JSONL

mmBERT trains with ModernBERT's `NoStreamingDataset` (`streaming: false`, `sequence_packing: true`): it opens
`<local>/index.json`, builds each shard with streaming's `reader_from_json`, requires its raw file, validates it and
spans the samples with `Spanner`; a sample keeps its arrays, cut to max_seq_len. Those steps are repeated here one
by one, each raw file's sha256 is checked as streaming hashes it, every source folder's own index.json loads alone,
and streaming's `StreamingDataset(local=...)` reads the same samples. Every sample goes to SAMPLES_JSONL as
{"id", "input_ids"} in the trainer's order; the counts go to stdout as JSON.
"""

import json
import os
import sys
import types

import numpy as np

# streaming/__init__ imports its image datasets, which import torchvision: torch 2.13's CPU torchvision is only on
# download.pytorch.org, out of the project's reach (PyPI's needs CUDA's libraries), and no text loader uses it
sys.modules["streaming.vision"] = types.ModuleType("streaming.vision")

from streaming import StreamingDataset  # noqa: E402
from streaming.base.format import reader_from_json  # noqa: E402
from streaming.base.hashing import get_hash  # noqa: E402
from streaming.base.spanner import Spanner  # noqa: E402


def trainer_shards(local: str) -> list:
    """NoStreamingDataset.__init__'s shards, with each raw file's sha256 checked against its index entry."""
    with open(os.path.join(local, "index.json")) as f:
        index = json.load(f)
    shards = []
    for info in index["shards"]:
        shard = reader_from_json(local, None, info)
        raw = os.path.join(shard.dirname, shard.split, shard.raw_data.basename)
        assert os.path.isfile(raw), f"Raw file {raw} does not exist"
        shard.validate(True)
        with open(raw, "rb") as f:
            assert get_hash("sha256", f.read()) == shard.raw_data.hashes["sha256"], raw
        shards.append(shard)
    return shards


def main(local: str, max_seq_len: int, samples_path: str) -> None:
    shards = trainer_shards(local)
    counts = np.array([shard.samples for shard in shards], np.int64)
    spanner = Spanner(counts)
    samples = []
    with open(samples_path, "w") as out:
        for index in range(int(counts.sum())):
            shard_id, shard_sample_id = spanner[index]
            sample = shards[shard_id][shard_sample_id]
            kept = {key: value[:max_seq_len] for key, value in sample.items() if isinstance(value, np.ndarray)}
            ids = kept["input_ids"]
            assert list(kept) == ["input_ids"] and ids.dtype == np.uint32 and len(ids) == sample["len"], sample
            samples.append((sample["id"], ids))
            out.write(json.dumps({"id": sample["id"], "input_ids": ids.tolist()}) + "\n")
    folders = sorted({os.path.dirname(shard.raw_data.basename) for shard in shards})
    per_folder = sum(shard.samples for folder in folders for shard in trainer_shards(os.path.join(local, folder)))
    dataset = StreamingDataset(local=local, shuffle=False, batch_size=1)
    assert dataset.num_samples == len(samples)
    for index, (sample_id, ids) in enumerate(samples):
        sample = dataset[index]
        assert sample["id"] == sample_id and np.array_equal(sample["input_ids"], ids), index
    iterated = sorted(sample["id"] for sample in dataset)
    assert iterated == sorted(sample_id for sample_id, _ in samples)
    print(json.dumps({"samples": len(samples), "folders": len(folders), "folder_samples": per_folder,
                      "streaming_samples": len(iterated)}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
