"""Build a model folder with the exact BAAI/bge-m3 file layout and random weights.

Tests (and users smoke-testing an install without network) load it through the same code
path as the real model. The tokenizer is a real sentencepiece unigram model trained in-process
on the multilingual sentences in `sentences.txt`, converted the way `XLMRobertaTokenizer` does
(<s>=0, <pad>=1, </s>=2, <unk>=3, sentencepiece pieces shifted by one, <mask> last).

    python -m connector.testing.tiny_model ./tiny-bge-m3                # a few MB, seconds
    python -m connector.testing.tiny_model ./fake-bge-m3 --shape full   # bge-m3's real shape, 2.3 GB
"""

from __future__ import annotations

import argparse
import io
import json
import math
import tempfile
from pathlib import Path

SENTENCES = Path(__file__).with_name("sentences.txt")

#: Presets for `--shape`: layers, hidden size, heads, FFN size, vocab size (None: the tokenizer's).
SHAPES = {
    "tiny": dict(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, vocab_size=None),
    "full": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096, vocab_size=250002),
}

_SPECIAL_TOKENS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


def make_model(
    out_dir,
    *,
    num_layers: int = 2,
    hidden_size: int = 32,
    num_heads: int = 4,
    intermediate_size: int = 64,
    vocab_size: int | None = None,
    max_position_embeddings: int = 8194,
    seed: int = 0,
) -> Path:
    """Write a random-weight XLM-RoBERTa model in BAAI/bge-m3's file layout to `out_dir`.

    Files: config.json, model.safetensors, sentencepiece.bpe.model, tokenizer.json,
    tokenizer_config.json, special_tokens_map.json, sparse_linear.pt (Linear(hidden, 1), fp16),
    colbert_linear.pt (Linear(hidden, hidden), fp16) and the sentence-transformers module files
    (modules.json, config_sentence_transformers.json, sentence_bert_config.json,
    1_Pooling/config.json with CLS pooling). Existing files are overwritten.

    `vocab_size=None` uses the tokenizer's size; a larger value (250002 for bge-m3's real
    embedding matrix) leaves the extra rows unused. Equal arguments give identical weights.
    Returns the folder's path.
    """
    import torch

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _write_tokenizer(out)
    if vocab_size is None:
        vocab_size = len(tokenizer)
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size ({vocab_size}) must be at least the tokenizer's size ({len(tokenizer)})")

    config = _bge_m3_config(num_layers, hidden_size, num_heads, intermediate_size, vocab_size, max_position_embeddings)
    _write_json(out / "config.json", config)
    # Leave the caller's random state alone: the weights depend on `seed` only.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _write_weights(out, config)
        _write_heads(out, hidden_size)
    _write_sentence_transformers_files(out, hidden_size)
    return out


def _bge_m3_config(layers, hidden, heads, ffn, vocab, positions) -> dict:
    """BAAI/bge-m3's config.json with the shape replaced."""
    return {
        "architectures": ["XLMRobertaModel"],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "classifier_dropout": None,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": positions,
        "model_type": "xlm-roberta",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "output_past": True,
        "pad_token_id": 1,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": 1,
        "use_cache": True,
        "vocab_size": vocab,
    }


def _train_sentencepiece() -> bytes:
    import sentencepiece as spm

    sentences = SENTENCES.read_text(encoding="utf-8").splitlines()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=2000,
        hard_vocab_limit=False,  # the corpus is small: take what it yields
        character_coverage=1.0,
        byte_fallback=False,  # as XLM-R: unseen characters become <unk>
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    return model.getvalue()


def _write_tokenizer(out: Path):
    """Write sentencepiece.bpe.model and the transformers tokenizer files; return the tokenizer."""
    from transformers import XLMRobertaTokenizer

    spm_bytes = _train_sentencepiece()
    (out / "sentencepiece.bpe.model").write_bytes(spm_bytes)
    # Convert in a folder holding only the sentencepiece model, so stale tokenizer files in
    # `out` cannot be picked up instead.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sentencepiece.bpe.model").write_bytes(spm_bytes)
        tokenizer = XLMRobertaTokenizer.from_pretrained(tmp)
    tokenizer.model_max_length = 8192
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))

    mask_id = len(tokenizer) - 1
    assert tokenizer.convert_tokens_to_ids("<mask>") == mask_id
    assert all(tokenizer.convert_tokens_to_ids(t) == i for t, i in _SPECIAL_TOKENS.items())
    added = {str(i): _added_token(t) for t, i in _SPECIAL_TOKENS.items()}
    added[str(mask_id)] = _added_token("<mask>", lstrip=True)
    _write_json(
        out / "tokenizer_config.json",
        {
            "added_tokens_decoder": added,
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": True,
            "cls_token": "<s>",
            "eos_token": "</s>",
            "mask_token": "<mask>",
            "model_max_length": 8192,
            "pad_token": "<pad>",
            "sep_token": "</s>",
            "sp_model_kwargs": {},
            "tokenizer_class": "XLMRobertaTokenizer",
            "unk_token": "<unk>",
        },
    )
    mask = _added_token("<mask>", lstrip=True)
    del mask["special"]
    _write_json(
        out / "special_tokens_map.json",
        {
            "bos_token": "<s>",
            "cls_token": "<s>",
            "eos_token": "</s>",
            "mask_token": mask,
            "pad_token": "<pad>",
            "sep_token": "</s>",
            "unk_token": "<unk>",
        },
    )
    return tokenizer


def _added_token(content: str, lstrip: bool = False) -> dict:
    return {"content": content, "lstrip": lstrip, "normalized": False, "rstrip": False, "single_word": False, "special": True}


def _write_weights(out: Path, config: dict) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaConfig, XLMRobertaModel

    model = XLMRobertaModel(XLMRobertaConfig(**config))
    # The usual N(0, 0.02) init makes every hidden state nearly equal to its own token's
    # embedding, so random outputs would hardly depend on the text. Scaling by fan-in makes
    # attention and FFN contribute as much as the residual: outputs really depend on the input.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 1.0 / math.sqrt(module.in_features))
                module.bias.normal_(0.0, 0.02)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def _write_heads(out: Path, hidden: int) -> None:
    """sparse_linear.pt and colbert_linear.pt: fp16 state dicts, as in BAAI/bge-m3."""
    import torch

    sparse = torch.nn.Linear(hidden, 1)
    colbert = torch.nn.Linear(hidden, hidden)
    with torch.no_grad():
        # Bias 0 and a small weight: about half the tokens get a positive weight, of the
        # real model's order of magnitude (tenths).
        sparse.weight.normal_(0.0, 0.3 / math.sqrt(hidden))
        sparse.bias.zero_()
        colbert.weight.normal_(0.0, 1.0 / math.sqrt(hidden))
        colbert.bias.zero_()
    torch.save(sparse.half().state_dict(), out / "sparse_linear.pt")
    torch.save(colbert.half().state_dict(), out / "colbert_linear.pt")


def _write_sentence_transformers_files(out: Path, hidden: int) -> None:
    from importlib.metadata import version

    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "__version__": {
                "sentence_transformers": version("sentence-transformers"),
                "transformers": version("transformers"),
                "pytorch": version("torch"),
            }
        },
    )
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": 8192, "do_lower_case": False})
    (out / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": True,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m connector.testing.tiny_model",
        description="Write a random-weight model with BAAI/bge-m3's exact file layout.",
        epilog="Example: python -m connector.testing.tiny_model ./tiny-bge-m3 --layers 4 --hidden 64",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                        help="preset: tiny (default, a few MB) or full (bge-m3's real shape, 2.3 GB)")
    parser.add_argument("--layers", type=int, help="number of transformer layers")
    parser.add_argument("--hidden", type=int, help="hidden size (the dense vector's dimension)")
    parser.add_argument("--heads", type=int, help="attention heads (must divide --hidden)")
    parser.add_argument("--ffn", type=int, help="feed-forward (intermediate) size")
    parser.add_argument("--vocab", type=int, help="embedding rows (default: the tokenizer's size)")
    parser.add_argument("--positions", type=int, default=8194, help="max_position_embeddings (default 8194)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    args = parser.parse_args(argv)

    shape = dict(SHAPES[args.shape])
    for option, key in [("layers", "num_layers"), ("hidden", "hidden_size"), ("heads", "num_heads"),
                        ("ffn", "intermediate_size"), ("vocab", "vocab_size")]:
        if getattr(args, option) is not None:
            shape[key] = getattr(args, option)
    try:
        path = make_model(args.out_dir, max_position_embeddings=args.positions, seed=args.seed, **shape)
    except ValueError as err:
        parser.error(str(err))
    print(path)


if __name__ == "__main__":
    main()
