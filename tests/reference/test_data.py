"""Shards in, batches out: reading Parquet and MDS, packing, masking rules."""

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402

from manifests.layout import Layout  # noqa: E402
from pipeline.cli import main  # noqa: E402
from reference.data import cut, make_batch, mask_tokens, pack, read_chunks  # noqa: E402


@pytest.mark.slow  # builds the samples
def test_parquet_shards_and_mds_export_give_the_same_chunks(sample_build, tmp_path):
    out, _ = sample_build
    assert main(["export-mds", "--phase", "1", "--out", str(out), str(tmp_path / "mds")]) == 0
    parquet = sorted(chunk.tolist() for chunk in read_chunks(Layout(out / "phase1" / "shards")))
    mds = list(read_chunks(Layout(tmp_path / "mds")))
    assert all(chunk.dtype == np.uint32 for chunk in mds)
    assert len(parquet) == len(mds) > 100
    assert parquet == sorted(chunk.tolist() for chunk in mds)  # the export groups the chunks by source
    assert all(chunk[0] == 2 and chunk[-1] == 1 for chunk in parquet)


def test_pack_respects_the_budget_and_chunk_boundaries():
    chunks = [np.arange(n, dtype=np.uint32) for n in (300, 500, 400, 100, 1000)]
    batches = list(pack(chunks, max_tokens=1000))
    assert [b.cu_seqlens.tolist() for b in batches] == [[0, 300, 800], [0, 400, 500], [0, 1000]]
    assert all(b.input_ids.numel() <= 1000 for b in batches)
    with pytest.raises(ValueError, match="does not fit"):
        list(pack([np.arange(1001)], max_tokens=1000))
    rows, mask = batches[0].padded(pad_id=0)
    assert rows.shape == (2, 500) and mask.sum() == 800 and rows[0, 300:].eq(0).all()


def test_cut_keeps_every_token_in_pieces_that_fit():
    chunks = [np.arange(n, dtype=np.uint32) for n in (1024, 300, 513)]
    pieces = list(cut(chunks, 512))
    assert [len(piece) for piece in pieces] == [512, 512, 300, 512, 1]
    assert np.concatenate(pieces).tolist() == np.concatenate(chunks).tolist()


def test_masking_rules():
    generator = torch.Generator().manual_seed(0)
    specials = {0, 1, 2, 4}
    chunks = [np.concatenate([[2], np.random.default_rng(i).integers(5, 1000, 2000), [1]]) for i in range(20)]
    batch = mask_tokens(make_batch(chunks), 0.3, 4, 1000, specials, generator)
    original = make_batch(chunks).input_ids
    targets = batch.labels != -100
    assert abs(targets.float().mean().item() - 0.3) < 0.01
    assert not torch.isin(original[targets], torch.tensor(sorted(specials))).any()  # never bos/eos/pad/mask
    assert torch.equal(batch.labels[targets], original[targets])
    masked = (batch.input_ids[targets] == 4).float().mean().item()
    kept = (batch.input_ids[targets] == original[targets]).float().mean().item()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02
    assert torch.equal(batch.input_ids[~targets], original[~targets])
