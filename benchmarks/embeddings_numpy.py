"""The alternative that lost: a BERT forward in numpy over the safetensors weights, no torch.

Used by benchmarks/embeddings.py only (``--numpy``); Ferry runs llama.cpp (ferry/embeddings). It is
exact (cosine 0.9999999 to sentence-transformers, max |diff| 1.5e-7) but measured about half as fast
per CPU-second on a single short sentence: every forward streams all F32 weights through OpenBLAS.

Numerics follow Hugging Face ``BertModel`` in float32: post-LayerNorm blocks, exact (erf) GELU,
token-type 0 everywhere, absolute positions ``0..L-1``, padded keys masked with ``-1e9``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

_NEG = np.float32(-1e9)  # added to the scores of padded keys


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_heads: int
    num_layers: int
    max_positions: int
    vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        c = json.loads(path.read_text())
        if c.get("model_type") != "bert" or c.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: only BERT with exact GELU is supported")
        return cls(
            hidden_size=c["hidden_size"],
            num_heads=c["num_attention_heads"],
            num_layers=c["num_hidden_layers"],
            max_positions=c["max_position_embeddings"],
            vocab_size=c["vocab_size"],
            layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)),
        )


@dataclass(frozen=True)
class Layer:
    qkv_w: np.ndarray  # [hidden, 3*hidden], transposed for x @ w
    qkv_b: np.ndarray  # [3*hidden]
    out_w: np.ndarray  # [hidden, hidden]
    out_b: np.ndarray
    ln1: tuple[np.ndarray, np.ndarray]
    ffn_in_w: np.ndarray  # [hidden, intermediate]
    ffn_in_b: np.ndarray
    ffn_out_w: np.ndarray  # [intermediate, hidden]
    ffn_out_b: np.ndarray
    ln2: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class BertWeights:
    config: BertConfig
    word: np.ndarray  # [vocab, hidden]
    position_plus_type0: np.ndarray  # [max_positions, hidden]: position + token-type-0 rows
    ln_emb: tuple[np.ndarray, np.ndarray]
    layers: tuple[Layer, ...]

    @classmethod
    def load(cls, model_dir: Path) -> BertWeights:
        config = BertConfig.from_json(model_dir / "config.json")
        raw = load_file(str(model_dir / "model.safetensors"))
        t = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in raw.items()}

        def ln(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            return t[prefix + ".weight"], t[prefix + ".bias"]

        def c(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a)

        layers = []
        for i in range(config.num_layers):
            p = f"encoder.layer.{i}."
            a = p + "attention.self."
            qkv_w = np.concatenate([t[a + n + ".weight"] for n in ("query", "key", "value")])
            qkv_b = np.concatenate([t[a + n + ".bias"] for n in ("query", "key", "value")])
            layers.append(
                Layer(
                    qkv_w=c(qkv_w.T),
                    qkv_b=qkv_b,
                    out_w=c(t[p + "attention.output.dense.weight"].T),
                    out_b=t[p + "attention.output.dense.bias"],
                    ln1=ln(p + "attention.output.LayerNorm"),
                    ffn_in_w=c(t[p + "intermediate.dense.weight"].T),
                    ffn_in_b=t[p + "intermediate.dense.bias"],
                    ffn_out_w=c(t[p + "output.dense.weight"].T),
                    ffn_out_b=t[p + "output.dense.bias"],
                    ln2=ln(p + "output.LayerNorm"),
                )
            )
        return cls(
            config=config,
            word=t["embeddings.word_embeddings.weight"],
            position_plus_type0=t["embeddings.position_embeddings.weight"]
            + t["embeddings.token_type_embeddings.weight"][0],
            ln_emb=ln("embeddings.LayerNorm"),
            layers=tuple(layers),
        )


def _layer_norm(x: np.ndarray, wb: tuple[np.ndarray, np.ndarray], eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    var = np.mean(xc * xc, axis=-1, keepdims=True)
    return xc / np.sqrt(var + eps) * wb[0] + wb[1]


def _gelu_(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, in place on float32 ``x``; returns ``x``.

    numpy has no erf: Abramowitz & Stegun 7.1.26 gives q = 1 - erf(|x|/sqrt2) with |error| < 1.5e-7
    (below float32 noise). Then gelu(x) = max(x, 0) - |x| * q / 2 for either sign, so no masked
    copy is needed (``copyto(where=)`` was 3x slower than all the rest). ``out=`` everywhere: the
    [tokens, 1536] temporaries are not reallocated per op.
    """
    a = np.abs(x)
    z = a * np.float32(0.7071067811865476)  # |x| / sqrt(2)
    t = z * np.float32(0.3275911)
    t += 1.0
    np.reciprocal(t, out=t)
    q = np.float32(1.061405429) * t
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        q += np.float32(c)
        q *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    q *= z  # q = 1 - erf(|x| / sqrt2)
    q *= a
    q *= np.float32(0.5)
    np.maximum(x, 0, out=x)
    x -= q
    return x


def encode(w: BertWeights, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Last hidden states for right-padded ``ids`` [B, L] with ``mask`` [B, L] (1 real, 0 pad).

    Returns float32 [B, L, hidden]; rows at padded positions are meaningless.
    """
    cfg = w.config
    b, n = ids.shape
    h, nh = cfg.hidden_size, cfg.num_heads
    hd = h // nh
    x = w.word[ids] + w.position_plus_type0[:n]  # [B, L, H]
    x = _layer_norm(x, w.ln_emb, cfg.layer_norm_eps).reshape(b * n, h)
    key_bias = np.where(mask[:, None, None, :] > 0, np.float32(0), _NEG)  # [B, 1, 1, L]
    scale = np.float32(1.0 / np.sqrt(hd))
    for layer in w.layers:
        qkv = x @ layer.qkv_w + layer.qkv_b  # [B*L, 3H]
        qkv = qkv.reshape(b, n, 3, nh, hd).transpose(2, 0, 3, 1, 4)  # [3, B, nh, L, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q * scale) @ k.transpose(0, 1, 3, 2) + key_bias  # [B, nh, L, L]
        scores -= scores.max(-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(-1, keepdims=True)
        ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(b * n, h)  # [B*L, H]
        x = _layer_norm(ctx @ layer.out_w + layer.out_b + x, layer.ln1, cfg.layer_norm_eps)
        up = x @ layer.ffn_in_w
        up += layer.ffn_in_b
        ff = _gelu_(up) @ layer.ffn_out_w + layer.ffn_out_b
        x = _layer_norm(ff + x, layer.ln2, cfg.layer_norm_eps)
    return x.reshape(b, n, h)


class NumpyMiniLM:
    """Embeds id sequences ([CLS] ... [SEP]): length-sorted, right-padded batches, mean pooled."""

    def __init__(self, model_dir: Path, token_budget: int = 4096) -> None:
        self.w = BertWeights.load(model_dir)
        self.token_budget = token_budget

    def embed(self, seqs: list[list[int]]) -> np.ndarray:
        out = np.zeros((len(seqs), self.w.config.hidden_size), np.float32)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        start = 0
        while start < len(order):
            end = start + 1  # ascending lengths: the last one added sets the padded width
            while (
                end < len(order) and (end - start + 1) * len(seqs[order[end]]) <= self.token_budget
            ):
                end += 1
            batch = order[start:end]
            width = len(seqs[batch[-1]])
            ids = np.zeros((len(batch), width), np.int64)
            mask = np.zeros((len(batch), width), np.float32)
            for r, i in enumerate(batch):
                ids[r, : len(seqs[i])] = seqs[i]
                mask[r, : len(seqs[i])] = 1.0
            hidden = encode(self.w, ids, mask)
            out[batch] = np.einsum("blh,bl->bh", hidden, mask) / mask.sum(1, keepdims=True)
            start = end
        return out / np.linalg.norm(out, axis=1, keepdims=True)
