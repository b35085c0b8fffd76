"""BGEM3Encoder matches an independent bge-m3 computation, keeps its contracts and fails clearly."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from connector.config import EncoderConfig
from connector.encoders.bge_m3 import BGEM3Encoder, hub_allow_patterns, lexical_weights, physical_cores
from connector.errors import ConfigError, ModelLoadError
from connector.testing import make_model

XLMR_SPECIAL_IDS = {0, 1, 2, 3}  # <s>, <pad>, </s>, <unk>

SENTENCES = (Path(__file__).parents[1] / "connector" / "testing" / "sentences.txt").read_text(encoding="utf-8")

TEXTS = [
    "Hello world",
    "",
    "Der schnelle braune Fuchs springt über den faulen Hund. Die Rechnung wird am Ende jedes Monats verschickt.",
    "敏捷的棕色狐狸跳过了懒惰的狗。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "world world world world, hello world, the world of worlds",
    "素早い茶色の狐 ☃ ♞ unseen symbols become <unk>",
    "Le renard brun rapide saute par-dessus le chien paresseux. " * 6,
    "x",
    SENTENCES,  # thousands of tokens: truncated at max_length
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """bge-m3 computed independently: raw transformers, one text at a time, no padding."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModel.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    head = torch.load(tiny_model_dir / "sparse_linear.pt", weights_only=True)
    weight, bias = head["weight"].float(), head["bias"].float()

    def encode_one(text: str, max_length: int = 512):
        ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = model(input_ids=ids).last_hidden_state[0]
        dense = (hidden[0] / hidden[0].norm()).numpy()
        token_weights = torch.relu(hidden @ weight.T + bias)[:, 0].tolist()
        sparse: dict[int, float] = {}
        for token_id, w in zip(ids[0].tolist(), token_weights):
            if token_id in XLMR_SPECIAL_IDS or w <= 0:
                continue
            if w > sparse.get(token_id, 0.0):
                sparse[token_id] = w
        return ids[0].tolist(), token_weights, dense, sparse

    return encode_one


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    """A second model: another hidden size and only 258 positions (256 usable tokens)."""
    return make_model(
        tmp_path_factory.mktemp("wide-bge-m3"), hidden_size=48, num_heads=4, max_position_embeddings=258, seed=1
    )


def test_matches_independent_reference_across_padded_batches(tiny_encoder, reference, plain_batches):
    lengths = [len(tiny_encoder.tokenizer(t, truncation=True, max_length=512)["input_ids"]) for t in TEXTS]
    assert max(lengths) == 512  # truncation happens
    assert len(set(lengths)) == len(TEXTS)  # every batch of 4 needs padding
    assert len(TEXTS) > 2 * tiny_encoder.batch_size  # several batches
    from connector.encoders import bge_m3

    assert all(len(b) > 1 for b in bge_m3.length_batches(lengths, tiny_encoder.batch_size)[:-1])  # padded batches

    results = tiny_encoder.encode(TEXTS)

    assert len(results) == len(TEXTS)
    for text, got in zip(TEXTS, results):
        _, _, dense, sparse = reference(text)
        np.testing.assert_allclose(got.dense, dense, atol=1e-5, err_msg=text[:40])
        assert list(got.sparse.indices) == sorted(sparse), text[:40]
        np.testing.assert_allclose(got.sparse.values, [sparse[i] for i in sorted(sparse)], atol=1e-5)


def test_batches_are_sorted_by_length_and_padded_to_their_own_longest(tiny_encoder):
    lengths = [len(tiny_encoder.tokenizer(t, truncation=True, max_length=512)["input_ids"]) for t in TEXTS]
    shapes = []
    model, _sparse_head = tiny_encoder._loaded()
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        tiny_encoder.encode(TEXTS)
    finally:
        hook.remove()
    from connector.encoders.bge_m3 import length_batches

    batches = length_batches(lengths, tiny_encoder.batch_size)
    assert shapes == [(len(batch), lengths[batch[0]]) for batch in batches]
    assert [lengths[i] for batch in batches for i in batch] == sorted(lengths, reverse=True)


def test_sentence_transformers_gives_the_same_dense_vectors(tiny_model_dir, tiny_encoder):
    from sentence_transformers import SentenceTransformer

    texts = [t for t in TEXTS if t is not SENTENCES]  # stay under max_length: ST truncates at 8192
    st_dense = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(texts, batch_size=3)
    ours = np.stack([v.dense for v in tiny_encoder.encode(texts)])
    np.testing.assert_allclose(ours, st_dense, atol=1e-5)


def test_output_order_is_input_order(tiny_encoder):
    texts = TEXTS[:9]
    forward = tiny_encoder.encode(texts)
    backward = tiny_encoder.encode(texts[::-1])[::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_allclose(a.dense, b.dense, atol=1e-6)
        assert a.sparse.as_dict().keys() == b.sparse.as_dict().keys()
    # and the vectors really differ between texts, so a mix-up would show
    assert not np.allclose(forward[0].dense, forward[2].dense, atol=1e-3)


def test_vector_contracts(tiny_encoder):
    for vectors in tiny_encoder.encode(TEXTS):
        assert vectors.dense.dtype == np.float32 and vectors.dense.shape == (32,)
        assert abs(float(np.linalg.norm(vectors.dense)) - 1.0) < 1e-5
        ids, values = vectors.sparse.indices, vectors.sparse.values
        assert ids.dtype == np.int64 and values.dtype == np.float32
        assert np.all(np.diff(ids) > 0)  # sorted and unique
        assert np.all(values > 0)
        assert not set(ids.tolist()) & XLMR_SPECIAL_IDS
    assert tiny_encoder.dimension == 32


def test_unknown_characters_are_dropped(tiny_encoder):
    text = "☃ ♞ ☃"
    assert 3 in tiny_encoder.tokenizer(text)["input_ids"]
    [vectors] = tiny_encoder.encode([text])
    assert 3 not in vectors.sparse.indices


def test_repeated_token_keeps_its_max_weight(tiny_encoder, reference):
    text = "world world world world, hello world, the world of worlds"
    ids, token_weights, _, _ = reference(text)
    world = tiny_encoder.tokenizer("world", add_special_tokens=False)["input_ids"][0]
    occurrences = [w for i, w in zip(ids, token_weights) if i == world]
    assert len(occurrences) >= 4
    assert len({round(w, 4) for w in occurrences}) > 1 and max(occurrences) > 0  # max != first/last/sum

    [vectors] = tiny_encoder.encode([text])
    assert vectors.sparse.as_dict()[world] == pytest.approx(max(occurrences), abs=1e-5)


def test_lexical_weights_rule():
    ids = np.array([0, 5, 7, 5, 9, 2, 3, 1, 11, 5], dtype=np.int64)
    weights = np.array([0.9, 0.1, 0.0, 0.4, -0.2, 0.8, 0.7, 0.6, 0.3, 0.2], dtype=np.float32)
    sparse = lexical_weights(ids, weights, np.array([0, 1, 2, 3]))
    assert sparse.indices.tolist() == [5, 11]
    np.testing.assert_allclose(sparse.values, [0.4, 0.3])
    assert lexical_weights(ids[:1], weights[:1], np.array([0, 1, 2, 3])).indices.size == 0


def test_empty_inputs(tiny_encoder):
    assert tiny_encoder.encode([]) == []
    [vectors] = tiny_encoder.encode([""])
    assert vectors.sparse.indices.size == 0 and vectors.sparse.values.size == 0
    assert vectors.dense.shape == (32,)
    assert abs(float(np.linalg.norm(vectors.dense)) - 1.0) < 1e-5


def test_dimension_comes_from_the_model(wide_model_dir):
    encoder = BGEM3Encoder(str(wide_model_dir), max_length=256, batch_size=2)
    assert encoder.dimension == 48
    vectors = encoder.encode(["one", "two words"])
    assert all(v.dense.shape == (48,) for v in vectors)


def test_max_length_beyond_the_model_is_a_config_error(wide_model_dir):
    with pytest.raises(ConfigError, match="max_length"):
        BGEM3Encoder(str(wide_model_dir), max_length=512)


def test_fingerprint(tiny_model_dir, tiny_encoder, wide_model_dir):
    fp = tiny_encoder.fingerprint
    assert fp["model"] == str(tiny_model_dir.resolve())
    assert fp["revision"] is None
    assert fp["max_length"] == 512
    assert len(fp["content_sha256"]) == 64
    again = BGEM3Encoder(str(tiny_model_dir), max_length=512)
    assert again.fingerprint == fp
    assert BGEM3Encoder(str(tiny_model_dir), max_length=128).fingerprint["max_length"] == 128
    other = BGEM3Encoder(str(wide_model_dir), max_length=256).fingerprint
    assert other["content_sha256"] != fp["content_sha256"]


def test_fingerprint_sees_a_changed_sparse_head(tiny_model_dir, tmp_path):
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    before = BGEM3Encoder(str(copy), max_length=64).fingerprint["content_sha256"]
    head = torch.load(copy / "sparse_linear.pt", weights_only=True)
    head["bias"] += 0.5
    torch.save(head, copy / "sparse_linear.pt")
    assert BGEM3Encoder(str(copy), max_length=64).fingerprint["content_sha256"] != before


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_fingerprint_covers_the_middle_of_the_weights(tmp_path):
    # Two models of the same shape and size, differing only in the middle of the weight file
    # (a fine-tune changes weights, not sizes); the file is larger than 2 MiB, so the old
    # "first and last MiB" hash could not see the difference.
    first = make_model(tmp_path / "first", vocab_size=20000)
    second = Path(shutil.copytree(first, tmp_path / "second"))
    weights = second / "model.safetensors"
    assert weights.stat().st_size > 3 << 20
    _flip_middle_byte(weights)
    assert weights.stat().st_size == (first / "model.safetensors").stat().st_size
    a = BGEM3Encoder(str(first), max_length=64).fingerprint["content_sha256"]
    b = BGEM3Encoder(str(second), max_length=64).fingerprint["content_sha256"]
    assert a != b


def test_file_hashes_are_cached_until_the_file_changes(tiny_model_dir, tmp_path):
    from connector.encoders import filehash

    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    before = filehash.files_hashed
    first = BGEM3Encoder(str(copy), max_length=64).fingerprint["content_sha256"]
    hashed = filehash.files_hashed - before
    assert hashed >= 2  # the weights, the config, the sparse head, the tokenizer files
    assert BGEM3Encoder(str(copy), max_length=64).fingerprint["content_sha256"] == first
    assert filehash.files_hashed - before == hashed  # second time: nothing read

    _flip_middle_byte(copy / "model.safetensors")  # same size, new content
    changed = BGEM3Encoder(str(copy), max_length=64).fingerprint["content_sha256"]
    assert changed != first and filehash.files_hashed - before == hashed + 1  # only the weights again

    cache_file = filehash.cache_dir() / filehash.CACHE_FILE
    for garbage in (b"{not json", b"[1, 2]", b'{"%s": {"sha256": 5}}' % str(copy.resolve() / "config.json").encode()):
        cache_file.write_bytes(garbage)  # a corrupt cache costs a hash, never an error
        assert BGEM3Encoder(str(copy), max_length=64).fingerprint["content_sha256"] == changed
    json.loads(cache_file.read_text())  # and is written again whole


def test_the_file_hash_cache_stays_whole_with_two_processes(tmp_path):
    import hashlib
    import os
    import subprocess
    import sys

    from connector.encoders import filehash

    files = []
    for n in range(30):
        files.append(tmp_path / f"file-{n}")
        files[-1].write_bytes(os.urandom(1000 + n))
    cache = tmp_path / "cache"
    env = {**os.environ, filehash.CACHE_DIR_ENV: str(cache)}
    script = "import sys\nfrom connector.encoders.filehash import file_sha256\nfor p in sys.argv[1:]: file_sha256(p)"
    procs = [subprocess.Popen([sys.executable, "-c", script, *map(str, order)], env=env)
             for order in (files, files[::-1])]
    assert [p.wait(120) for p in procs] == [0, 0]
    entries = json.loads((cache / filehash.CACHE_FILE).read_text())  # whole JSON, whatever the interleaving
    assert entries and set(entries) <= {str(f.resolve()) for f in files}
    for path, entry in entries.items():  # racing writers may drop an entry, never spoil one
        assert entry["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert [p.name for p in cache.iterdir()] == [filehash.CACHE_FILE]  # no temporary file left


def test_from_config(tiny_model_dir):
    encoder = BGEM3Encoder.from_config(EncoderConfig(model=str(tiny_model_dir), max_length=256, batch_size=3))
    assert (encoder.max_length, encoder.batch_size) == (256, 3)
    assert encoder.tokenizer.is_fast


def test_threads_setting(tiny_model_dir):
    before = torch.get_num_threads()
    try:
        BGEM3Encoder(str(tiny_model_dir), max_length=64, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert physical_cores() >= 1


def test_missing_sparse_head_is_an_error_naming_the_file(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "no-head", ignore=shutil.ignore_patterns("sparse_linear.pt"))
    with pytest.raises(ModelLoadError, match="sparse_linear.pt"):
        BGEM3Encoder(str(copy))


def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="model folder not found"):
        BGEM3Encoder(str(tmp_path / "nowhere"))


def test_offline_hub_id_says_how_to_use_a_local_folder(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # An empty cache: nothing can be found locally. huggingface_hub reads these at import
    # time, so patch its constants as well as the environment.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError) as err:
        BGEM3Encoder("BAAI/bge-m3")
    message = str(err.value)
    assert "could not fetch the model 'BAAI/bge-m3'" in message
    assert "--local-dir" in message and "encoder" in message and "model: ./bge-m3" in message


def test_allow_patterns_skip_onnx_and_take_one_weight_file():
    hub_files = [
        "config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "sentencepiece.bpe.model", "sparse_linear.pt", "colbert_linear.pt",
        "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "1_Pooling/config.json",
        "onnx/model.onnx", "onnx/model.onnx_data", "onnx/tokenizer.json", "onnx/config.json", "imgs/bm25.jpg",
        "long.jpg", "README.md", ".gitattributes",
    ]  # fmt: skip
    patterns = hub_allow_patterns()
    chosen = {f for f in hub_files if any(fnmatch.fnmatch(f, p) for p in patterns)}
    assert not any(f.startswith("onnx/") for f in chosen)
    assert "model.safetensors" in chosen and "pytorch_model.bin" not in chosen
    assert {"config.json", "sparse_linear.pt", "tokenizer.json", "sentencepiece.bpe.model"} <= chosen
    assert "pytorch_model.bin" in hub_allow_patterns("pytorch_model.bin")


def test_hub_download_uses_the_patterns_and_records_the_commit(tiny_model_dir, tmp_path, monkeypatch):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(shutil.copytree(tiny_model_dir, tmp_path / "remote"))
    (repo / "onnx").mkdir()
    (repo / "onnx" / "model.onnx").write_bytes(b"big")
    calls = []

    def fake_snapshot_download(repo_id, *, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns))
        snapshot = tmp_path / "cache" / "snapshots" / commit
        for file in repo.rglob("*"):
            name = file.relative_to(repo).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    encoder = BGEM3Encoder("BAAI/bge-m3", revision="main", max_length=64)

    assert calls == [("BAAI/bge-m3", "main", hub_allow_patterns())]
    assert not (tmp_path / "cache" / "snapshots" / commit / "onnx").exists()
    assert encoder.fingerprint["model"] == "BAAI/bge-m3"
    assert encoder.fingerprint["revision"] == commit
    assert encoder.encode(["downloaded"])[0].dense.shape == (32,)


def test_weights_load_only_when_something_is_encoded(tiny_model_dir):
    encoder = BGEM3Encoder(str(tiny_model_dir), max_length=64)
    assert encoder._weights is None  # tokenizer, dimension and fingerprint need no weights
    assert encoder.dimension > 0 and encoder.fingerprint["content_sha256"]
    encoder.encode(["now the weights are needed"])
    assert encoder._weights is not None


def test_length_batches_cover_every_text_once_longest_first_with_little_padding():
    import random

    from connector.encoders.bge_m3 import MAX_PADDING, length_batches

    rng = random.Random(1)
    lengths = [rng.choice([rng.randint(3, 15), rng.randint(60, 90), rng.randint(384, 512)]) for _ in range(500)]
    batches = length_batches(lengths, batch_size=16)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(500))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    for batch in batches:
        assert 1 <= len(batch) <= 16
        padded = lengths[batch[0]] * len(batch)
        assert padded - sum(lengths[i] for i in batch) <= MAX_PADDING * padded
    # equal lengths fill whole batches; a long text never shares a batch with short ones
    assert length_batches([7] * 40, batch_size=16) == [list(range(16)), list(range(16, 32)), list(range(32, 40))]
    assert length_batches([500, 80, 80, 80], batch_size=16) == [[0], [1, 2, 3]]
    assert length_batches([], batch_size=4) == []


@pytest.fixture(scope="module")
def colbert_reference(tiny_model_dir):
    """bge-m3's ColBERT vectors computed independently (FlagEmbedding's steps), one text at a
    time without padding: colbert_linear(h[1:]) for every position after <s>, L2-normalised."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModel.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    head = torch.load(tiny_model_dir / "colbert_linear.pt", weights_only=True)
    weight, bias = head["weight"].float(), head["bias"].float()

    def colbert_one(text: str) -> np.ndarray:
        ids = tokenizer(text, truncation=True, max_length=512, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = model(input_ids=ids).last_hidden_state[0]
        vecs = hidden[1:] @ weight.T + bias
        return (vecs / vecs.norm(dim=-1, keepdim=True)).numpy()

    return colbert_one


def test_colbert_vectors_and_score_match_the_reference(tiny_encoder, colbert_reference, plain_batches):
    """encode(details=True) gives bge-m3's ColBERT vectors from the same padded batches, the
    per-position token weights behind the sparse vector, and colbert_score is FlagEmbedding's."""
    from connector.encoders.bge_m3 import colbert_score

    texts = [t for t in TEXTS if t][:6]
    got = tiny_encoder.encode(texts, details=True)
    plain = tiny_encoder.encode(texts)
    for text, v, p in zip(texts, got, plain):
        expected = colbert_reference(text)
        assert v.details.colbert.shape == expected.shape == (len(v.details.token_ids) - 1, tiny_encoder.dimension)
        np.testing.assert_allclose(v.details.colbert, expected, atol=1e-4)
        np.testing.assert_array_equal(v.dense, p.dense)  # details change nothing else
        by_id: dict[int, float] = {}
        for i, w in zip(v.details.token_ids.tolist(), v.details.token_weights.tolist()):
            if i not in XLMR_SPECIAL_IDS and w > 0:
                by_id[i] = max(w, by_id.get(i, 0.0))
        assert v.sparse.as_dict() == pytest.approx(by_id)
    q, d = colbert_reference(texts[0]), colbert_reference(texts[2])
    expected = float(torch.einsum("in,jn->ij", torch.from_numpy(q), torch.from_numpy(d)).max(-1)[0].sum() / len(q))
    assert colbert_score(q, d) == pytest.approx(expected, rel=1e-6)
    assert colbert_score(q, q) == pytest.approx(1.0, abs=1e-5)


def test_colbert_needs_its_head_file(tiny_model_dir, tmp_path):
    folder = tmp_path / "no-colbert"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "colbert_linear.pt").unlink()
    encoder = BGEM3Encoder(str(folder), max_length=64)
    assert "colbert_linear.pt" in encoder.colbert_error
    (v,) = encoder.encode(["hello world"], details=True)  # dense, sparse and tokens still work
    assert v.details.colbert is None and len(v.details.token_ids) > 2
