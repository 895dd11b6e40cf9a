"""Benchmark input generated at run time from the bundled samples, with a fixed seed (nothing committed)."""

import random
from functools import cache

import pyarrow.parquet as pq

from stages.base import Document
from stages.paths import SAMPLES_DIR as SAMPLES


@cache
def sample_texts() -> list[tuple[str, str]]:
    """(lang, text) of every FineWeb2 sample document."""
    texts = []
    for path in sorted((SAMPLES / "fineweb2" / "data").glob("*/train/*.parquet")):
        if "_removed" in str(path):
            continue
        table = pq.read_table(path, columns=["text", "language", "language_script"])
        for row in table.to_pylist():
            texts.append((f"{row['language']}_{row['language_script']}", row["text"]))
    return texts


def documents(n: int, seed: int = 0, independent: bool = False, duplicates: float = 0.0) -> list[Document]:
    """n web-page-like documents: paragraphs of one language's samples, shuffled and regrouped. `independent`:
    the words of each paragraph are shuffled too, so that documents share no long n-grams and the duplicate
    rate does not grow with n (the paragraphs alone repeat more the more documents there are). `duplicates`:
    that fraction of the documents copies an earlier one of its language, whole or without its last paragraph
    (an exact or a near duplicate), so that dedup has a constant share of work at any n."""
    rng = random.Random(seed)
    by_lang: dict[str, list[str]] = {}
    for lang, text in sample_texts():
        by_lang.setdefault(lang, []).extend(p for p in text.split("\n\n") if p.strip())
    langs = sorted(by_lang)
    docs = []
    for i in range(n):
        lang = langs[i % len(langs)]
        paragraphs = rng.sample(by_lang[lang], k=min(len(by_lang[lang]), rng.randint(3, 8)))
        if independent:
            paragraphs = [" ".join(rng.sample(words := p.split(" "), len(words))) for p in paragraphs]
        earlier = range(i % len(langs), i, len(langs))  # the documents of this language so far
        if earlier and rng.random() < duplicates:
            paragraphs = docs[rng.choice(earlier)].text.split("\n\n")
            paragraphs = paragraphs[:-1] if len(paragraphs) > 3 and rng.random() < 0.5 else paragraphs
        docs.append(Document(text="\n\n".join(paragraphs), id=f"bench/{i}",
                             metadata={"source": "bench", "lang": lang, "lang_source": "upstream",
                                       "lang_score": 0.99}))
    return docs
