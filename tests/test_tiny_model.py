"""The tiny model has BAAI/bge-m3's exact file layout and loads like the real one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModel, AutoTokenizer

from connector.testing import make_model

EXPECTED_FILES = [
    "config.json",
    "model.safetensors",
    "sentencepiece.bpe.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sparse_linear.pt",
    "colbert_linear.pt",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
]


def test_folder_has_bge_m3_layout(tiny_model_dir):
    for name in EXPECTED_FILES:
        assert (tiny_model_dir / name).is_file(), name

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["XLMRobertaModel"]
    assert config["model_type"] == "xlm-roberta"
    assert (config["bos_token_id"], config["pad_token_id"], config["eos_token_id"]) == (0, 1, 2)
    assert config["max_position_embeddings"] == 8194
    assert config["hidden_size"] == 32

    sparse = torch.load(tiny_model_dir / "sparse_linear.pt", weights_only=True)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in sparse.items()} == {
        "weight": (torch.float16, (1, 32)),
        "bias": (torch.float16, (1,)),
    }
    colbert = torch.load(tiny_model_dir / "colbert_linear.pt", weights_only=True)
    assert tuple(colbert["weight"].shape) == (32, 32)

    modules = json.loads((tiny_model_dir / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((tiny_model_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] is True and pooling["pooling_mode_mean_tokens"] is False
    assert pooling["word_embedding_dimension"] == 32


def test_tokenizer_follows_xlm_roberta_conventions(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.is_fast
    assert [tok.convert_tokens_to_ids(t) for t in ["<s>", "<pad>", "</s>", "<unk>"]] == [0, 1, 2, 3]
    assert tok.mask_token_id == len(tok) - 1
    assert tok.model_max_length == 8192

    # Pieces are the sentencepiece ids shifted by one; sentencepiece's <unk> (0) becomes 3.
    sp = spm.SentencePieceProcessor(model_file=str(tiny_model_dir / "sentencepiece.bpe.model"))
    assert len(tok) == sp.get_piece_size() + 2
    for text in ["Der Zug nach München fährt ab.", "敏捷的棕色狐狸跳过了懒惰的狗。", "مرحبا ☃ hello"]:
        expected = [0] + [i + 1 if i >= 3 else 3 for i in sp.encode(text)] + [2]
        assert tok(text)["input_ids"] == expected


def test_automodel_loads_every_weight(tiny_model_dir):
    model, info = AutoModel.from_pretrained(tiny_model_dir, output_loading_info=True)
    assert type(model).__name__ == "XLMRobertaModel"
    assert model.config.hidden_size == 32
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_random_sparse_head_gives_positive_and_non_positive_weights(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModel.from_pretrained(tiny_model_dir).eval()
    head = torch.load(tiny_model_dir / "sparse_linear.pt", weights_only=True)
    text = "Our support team answers every ticket within one business day."
    with torch.no_grad():
        hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
    scores = hidden @ head["weight"].float()[0] + head["bias"].float()
    assert (scores > 0).sum() >= 2 and (scores <= 0).sum() >= 2


def test_weights_depend_on_seed_only_and_leave_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = make_model(tmp_path / "a", hidden_size=16, num_heads=2, seed=7)
    assert torch.equal(torch.rand(3), expected_next)

    b = make_model(tmp_path / "b", hidden_size=16, num_heads=2, seed=7)
    c = make_model(tmp_path / "c", hidden_size=16, num_heads=2, seed=8)
    for name in ["model.safetensors", "sparse_linear.pt", "tokenizer.json", "sentencepiece.bpe.model"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_larger_vocab_size_is_used_for_the_embedding_matrix(tmp_path):
    from connector.encoders.bge_m3 import BGEM3Encoder

    folder = make_model(tmp_path / "big-vocab", hidden_size=16, num_heads=2, vocab_size=5000)
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 5000
    encoder = BGEM3Encoder(str(folder), max_length=64)
    assert encoder._loaded()[0].embeddings.word_embeddings.weight.shape == (5000, 16)
    [vectors] = encoder.encode(["a larger vocabulary still works"])
    assert vectors.sparse.indices.max() < len(encoder.tokenizer)


def test_vocab_smaller_than_tokenizer_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        make_model(tmp_path / "m", vocab_size=10)


def test_command_line_writes_a_loadable_model(tmp_path):
    from connector.encoders.bge_m3 import BGEM3Encoder

    out = tmp_path / "cli-model"
    result = subprocess.run(
        [sys.executable, "-m", "connector.testing.tiny_model", str(out), "--hidden", "24", "--heads", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert "Warning" not in result.stderr
    encoder = BGEM3Encoder(str(out), max_length=128)
    assert encoder.dimension == 24
    [vectors] = encoder.encode(["hello from the command line"])
    assert vectors.dense.shape == (24,)


def test_command_line_rejects_bad_shape(tmp_path, capsys):
    from connector.testing.tiny_model import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "m"), "--hidden", "30", "--heads", "4"])
    assert exit_info.value.code == 2
    assert "multiple of num_heads" in capsys.readouterr().err
