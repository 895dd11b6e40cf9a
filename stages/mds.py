"""MosaicML Streaming (MDS) shards, read and written natively (docs/architecture.md section 9).

Layout, as mosaicml/streaming's `mds/writer.py` writes it (all integers little-endian):
    u32 num_samples | u32 offsets[num_samples + 1] (absolute) | config JSON | samples
A sample holds one u32 size per variable-size column, in sorted column order, then the column bytes.
`ndarray:<dtype>` without a fixed shape stores one byte `(ndim << 2) | shape_code`, the shape in the smallest
unsigned type that fits (code 0..3 = uint8/16/32/64), then the values. `int` is an int64, `str` is UTF-8.
`index.json` lists the shards with their column names/encodings/sizes and `zip_data` when compressed (zstd).
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

DTYPE_CODES = {
    8: np.uint8, 9: np.int8, 16: np.uint16, 17: np.int16, 18: np.float16, 32: np.uint32, 33: np.int32,
    34: np.float32, 64: np.uint64, 65: np.int64, 66: np.float64,
}
SHAPE_DTYPES = [np.uint8, np.uint16, np.uint32, np.uint64]
FIXED_SIZES = {"int": 8, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "int8": 1, "int16": 2, "int32": 4,
               "int64": 8, "float16": 2, "float32": 4, "float64": 8}
SCALAR_DTYPES = {"int": np.int64} | {name: getattr(np, name) for name in FIXED_SIZES if name != "int"}


class MDSError(ValueError):
    pass


@dataclass(frozen=True)
class ShardInfo:
    """One entry of an index.json `shards` list."""

    raw_basename: str
    zip_basename: str | None
    compression: str | None
    samples: int
    column_names: list[str]
    column_encodings: list[str]
    column_sizes: list[int | None]
    raw_bytes: int

    @classmethod
    def from_index_entry(cls, entry: dict) -> "ShardInfo":
        try:
            zip_data = entry.get("zip_data") or {}
            return cls(
                raw_basename=entry["raw_data"]["basename"], zip_basename=zip_data.get("basename"),
                compression=entry.get("compression"), samples=int(entry["samples"]),
                column_names=list(entry["column_names"]), column_encodings=list(entry["column_encodings"]),
                column_sizes=list(entry["column_sizes"]), raw_bytes=int(entry["raw_data"]["bytes"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MDSError(f"index.json shard entry lacks or mangles {error}") from error

    @property
    def basename(self) -> str:
        """The file actually on disk: the compressed one when the shard is compressed."""
        return self.zip_basename if self.compression else self.raw_basename


def read_index(text: str) -> list[ShardInfo]:
    index = json.loads(text)
    if index.get("version") != 2 or not isinstance(index.get("shards"), list):
        raise MDSError(f"unsupported index.json (version {index.get('version')!r}); expected version 2")
    return [ShardInfo.from_index_entry(entry) for entry in index["shards"]]


def decompress(data: bytes, compression: str | None) -> bytes:
    if not compression:
        return data
    if compression.split(":")[0] != "zstd":
        raise MDSError(f"unsupported MDS compression {compression!r} (only zstd)")
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data)


def _decode_value(encoding: str, data: bytes) -> object:
    if encoding == "str":
        return data.decode("utf-8")
    if encoding == "bytes":
        return data
    if encoding in SCALAR_DTYPES:
        return np.frombuffer(data, SCALAR_DTYPES[encoding])[0].item()
    if encoding.startswith("ndarray"):
        return _decode_ndarray(encoding, data)
    raise MDSError(f"unsupported MDS column encoding {encoding!r}")


def _decode_ndarray(encoding: str, data: bytes) -> np.ndarray:
    parts = encoding.split(":")
    offset = 0
    if len(parts) > 1 and parts[1]:
        dtype = np.dtype(parts[1])
    else:
        dtype = np.dtype(DTYPE_CODES[data[0]])
        offset = 1
    if len(parts) > 2:
        shape = tuple(int(d) for d in parts[2].split(","))
    else:
        ndim, code = data[offset] >> 2, data[offset] % 4
        shape_dtype = np.dtype(SHAPE_DTYPES[code])
        offset += 1
        shape = tuple(np.frombuffer(data, shape_dtype, count=ndim, offset=offset).tolist())
        offset += ndim * shape_dtype.itemsize
    values = np.frombuffer(data, dtype, offset=offset)
    if values.size != int(np.prod(shape)):
        raise MDSError(f"ndarray of shape {shape} holds {values.size} values")
    return values.reshape(shape)


def iter_samples(raw: bytes, info: ShardInfo) -> Iterator[dict]:
    """Decode every sample of an uncompressed shard, checking it against its index entry."""
    if len(raw) != info.raw_bytes:
        raise MDSError(f"shard has {len(raw)} bytes, index.json says {info.raw_bytes}")
    count = int(np.frombuffer(raw, np.uint32, count=1)[0])
    if count != info.samples:
        raise MDSError(f"shard holds {count} samples, index.json says {info.samples}")
    offsets = np.frombuffer(raw, np.uint32, count=count + 1, offset=4)
    if offsets[-1] != len(raw) or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise MDSError("shard offsets disagree with its size")
    order = sorted(range(len(info.column_names)), key=lambda i: info.column_names[i])
    variable = [i for i in order if info.column_sizes[i] is None]
    for begin, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        sample = raw[begin:end]
        sizes = dict(zip(variable, np.frombuffer(sample, np.uint32, count=len(variable)).tolist(), strict=True))
        pos = 4 * len(variable)
        row = {}
        for i in order:
            size = sizes.get(i, info.column_sizes[i])
            row[info.column_names[i]] = _decode_value(info.column_encodings[i], sample[pos:pos + size])
            pos += size
        if pos != len(sample):
            raise MDSError(f"sample of {len(sample)} bytes decodes to {pos}")
        yield row


def _encode_value(encoding: str, value: object) -> bytes:
    if encoding == "str":
        return str(value).encode("utf-8")
    if encoding == "bytes":
        return bytes(value)
    if encoding in SCALAR_DTYPES:
        return np.asarray(value, SCALAR_DTYPES[encoding]).tobytes()
    if encoding.startswith("ndarray:"):
        array = np.ascontiguousarray(value, dtype=np.dtype(encoding.split(":")[1]))
        code = next(c for c, t in enumerate(SHAPE_DTYPES) if max(array.shape) < np.iinfo(t).max + 1)
        header = bytes([(array.ndim << 2) | code]) + np.asarray(array.shape, SHAPE_DTYPES[code]).tobytes()
        return header + array.tobytes()
    raise MDSError(f"unsupported MDS column encoding {encoding!r}")


def encode_shard(rows: list[dict], columns: dict[str, str]) -> tuple[bytes, dict]:
    """Encode rows into one raw shard; `columns` maps name -> encoding. Returns (bytes, config)."""
    names = sorted(columns)
    sizes = [FIXED_SIZES.get(columns[n]) for n in names]
    samples = []
    for row in rows:
        values = [_encode_value(columns[n], row[n]) for n in names]
        head = b"".join(np.uint32(len(v)).tobytes() for v, s in zip(values, sizes, strict=True) if s is None)
        samples.append(head + b"".join(values))
    config = {
        "column_encodings": [columns[n] for n in names], "column_names": names, "column_sizes": sizes,
        "compression": None, "format": "mds", "hashes": [], "size_limit": 1 << 26, "version": 2,
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    start = 4 + 4 * (len(samples) + 1) + len(config_bytes)
    offsets = np.cumsum([start] + [len(s) for s in samples]).astype(np.uint32)
    raw = np.uint32(len(samples)).tobytes() + offsets.tobytes() + config_bytes + b"".join(samples)
    return raw, config


def index_entry(raw: bytes, config: dict, samples: int, basename: str, zstd_data: bytes | None = None) -> dict:
    """The index.json entry for a shard written by `encode_shard` (and optionally zstd-compressed)."""
    entry = dict(config, samples=samples, raw_data={"basename": basename, "bytes": len(raw), "hashes": {}},
                 zip_data=None)
    if zstd_data is not None:
        entry["compression"] = "zstd"
        entry["zip_data"] = {"basename": f"{basename}.zstd", "bytes": len(zstd_data), "hashes": {}}
    return entry
