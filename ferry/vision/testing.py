"""A synthetic multimodal projector for tests: a tiny random-weight LLaVA-style ("mlp") mmproj GGUF.

No vision GGUF with its projector can be installed here without a hub download, so the image path
is exercised with this file instead. It is a real projector as far as llama.cpp's mtmd is
concerned (a ViT with patch embeddings, positional embeddings, transformer blocks and a two-layer
MLP projector into the text model's embedding space), only its weights are seeded random numbers:
it encodes any image into ``n_image_tokens`` embeddings of width ``n_embd_text`` deterministically,
and different images give different embeddings, but the text model cannot "see" anything.

Invariants:
- Written by ``write_mmproj`` in milliseconds and a few hundred KB; nothing is downloaded.
- The same ``seed`` and shape give a byte-identical file.
- ``n_image_tokens == (image_size // patch_size) ** 2``; the projector is not M-RoPE and uses
  causal attention in the text model, so one image is ``n_image_tokens`` consecutive positions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SMOLLM2_N_EMBD = 576  # width of the bundled SmolLM2-135M's embeddings


def n_image_tokens(image_size: int = 32, patch_size: int = 8) -> int:
    return (image_size // patch_size) ** 2


def write_mmproj(path: str | os.PathLike[str], *, n_embd_text: int = SMOLLM2_N_EMBD,
                 image_size: int = 32, patch_size: int = 8, n_embd: int = 32,
                 n_head: int = 2, n_ff: int = 64, n_layer: int = 2, seed: int = 0) -> Path:
    """Write a random-weight "mlp" (LLaVA-1.5 style) projector GGUF to ``path`` and return it."""
    import gguf  # test-only dependency; imported lazily so the server does not need it

    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    path = Path(path)
    wr = gguf.GGUFWriter(str(path), "clip")
    wr.add_string("general.name", "ferry-synthetic-mmproj")
    wr.add_string("general.description", "random weights, for tests only")
    wr.add_uint32("general.file_type", 0)
    wr.add_string("clip.projector_type", "mlp")
    wr.add_bool("clip.has_vision_encoder", True)
    wr.add_bool("clip.use_gelu", True)
    wr.add_uint32("clip.vision.image_size", image_size)
    wr.add_uint32("clip.vision.patch_size", patch_size)
    wr.add_uint32("clip.vision.embedding_length", n_embd)
    wr.add_uint32("clip.vision.feed_forward_length", n_ff)
    wr.add_uint32("clip.vision.projection_dim", n_embd_text)
    wr.add_uint32("clip.vision.attention.head_count", n_head)
    wr.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    wr.add_uint32("clip.vision.block_count", n_layer)
    wr.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    wr.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    n_pos = n_image_tokens(image_size, patch_size)
    # numpy shapes are reversed ggml shapes: (out, in) is ggml ne = [in, out].
    wr.add_tensor("v.patch_embd.weight", w(n_embd, 3, patch_size, patch_size).astype(np.float16))
    wr.add_tensor("v.patch_embd.bias", w(n_embd))
    wr.add_tensor("v.position_embd.weight", w(n_pos, n_embd))
    wr.add_tensor("v.pre_ln.weight", np.ones(n_embd, np.float32))
    wr.add_tensor("v.pre_ln.bias", np.zeros(n_embd, np.float32))
    for i in range(n_layer):
        b = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            wr.add_tensor(f"{b}.{name}.weight", w(n_embd, n_embd))
            wr.add_tensor(f"{b}.{name}.bias", w(n_embd))
        for ln in ("ln1", "ln2"):
            wr.add_tensor(f"{b}.{ln}.weight", np.ones(n_embd, np.float32))
            wr.add_tensor(f"{b}.{ln}.bias", np.zeros(n_embd, np.float32))
        wr.add_tensor(f"{b}.ffn_up.weight", w(n_ff, n_embd))
        wr.add_tensor(f"{b}.ffn_up.bias", w(n_ff))
        wr.add_tensor(f"{b}.ffn_down.weight", w(n_embd, n_ff))
        wr.add_tensor(f"{b}.ffn_down.bias", w(n_embd))
    n_mid = 64
    wr.add_tensor("mm.0.weight", w(n_mid, n_embd))
    wr.add_tensor("mm.0.bias", w(n_mid))
    # Scale the output to the order of magnitude of SmolLM2's token embeddings.
    wr.add_tensor("mm.2.weight", w(n_embd_text, n_mid, scale=0.02))
    wr.add_tensor("mm.2.bias", w(n_embd_text, scale=0.02))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def png_bytes(width: int, height: int, color: tuple[int, int, int] | None = None,
              seed: int = 0) -> bytes:
    """An RGB PNG (no Pillow needed): a solid ``color``, or seeded random pixels."""
    import struct
    import zlib

    if color is not None:
        pixels = np.broadcast_to(np.array(color, np.uint8), (height, width, 3))
    else:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))
