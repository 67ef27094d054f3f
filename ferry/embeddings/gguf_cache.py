"""One-time conversion of a sentence-transformers BERT directory to a GGUF that llama.cpp can run.

Invariants:
- The GGUF is written once per distinct model (key: sha256 of config.json, tokenizer.json and
  model.safetensors, plus ``FORMAT``) under the cache dir, to a temp name then ``os.replace``d,
  so a reader never sees a half-written file and concurrent converters are harmless.
- Layout: llama.cpp's ``bert`` arch, non-causal, mean pooling; the 2-D block matrices in F16
  (halves the weight bytes streamed per forward; cosine to the F32 reference stays >= 0.99999),
  embeddings, norms and biases in F32. The vocabulary is written in llama.cpp's phantom-space
  WordPiece form only so that the model loads: Ferry tokenises with Hugging Face ``tokenizers``
  and hands llama.cpp ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "ferry-bert-f16-v1"  # bump when the layout written below changes
_SOURCES = ("config.json", "tokenizer.json", "model.safetensors")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ferry" / "embeddings"


def cached_gguf(model_dir: Path, cache_dir: Path | None = None) -> Path:
    """Path of the GGUF for ``model_dir``, converting it first if it is not cached yet. Without
    ``cache_dir``: ``default_cache_dir()``, or the temp dir if that cannot be created."""
    if cache_dir is None:
        cache_dir = default_cache_dir()
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            cache_dir = Path(tempfile.gettempdir()) / f"ferry-embeddings-{os.getuid()}"
    digest = hashlib.sha256(FORMAT.encode())
    for name in _SOURCES:
        with open(model_dir / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    path = cache_dir / f"{model_dir.name}-{digest.hexdigest()[:16]}.gguf"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to %s (once)", model_dir, path)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".gguf.part")
    os.close(fd)
    try:
        convert(model_dir, Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared by other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _phantom(token: str) -> str:
    """llama.cpp's WordPiece spelling: word starts get U+2581, '##' continuations lose it."""
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def convert(model_dir: Path, out: Path) -> None:
    import gguf  # only needed for the one-time conversion
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ids: dict[str, int] = tok["model"]["vocab"]
    vocab = sorted(ids, key=ids.__getitem__)
    specials = {t["content"] for t in tok.get("added_tokens", []) if t.get("special")}
    w = gguf.GGUFWriter(str(out), "bert")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(float(cfg.get("layer_norm_eps", 1e-12)))
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([_phantom(t) for t in vocab])
    w.add_token_types(
        [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in vocab]
    )
    w.add_token_type_count(cfg.get("type_vocab_size", 2))
    w.add_bos_token_id(ids["[CLS]"])
    w.add_eos_token_id(ids["[SEP]"])
    w.add_sep_token_id(ids["[SEP]"])
    w.add_unk_token_id(ids["[UNK]"])
    w.add_pad_token_id(ids["[PAD]"])
    w.add_mask_token_id(ids["[MASK]"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, cfg["num_hidden_layers"])
    for full_key, tensor in load_file(str(model_dir / "model.safetensors")).items():
        key = full_key.removeprefix("bert.")
        if key.endswith("position_ids") or key.startswith("pooler."):
            continue  # buffers and the unused CLS pooler
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{model_dir}: unexpected tensor {key}")
        arr = tensor.astype(np.float32)
        w.add_tensor(
            name, arr.astype(np.float16) if arr.ndim == 2 and name.startswith("blk.") else arr
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
