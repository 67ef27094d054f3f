"""A multimodal projector (``--mmproj``) loaded through llama.cpp's mtmd: prompt text with image
markers + image bytes -> prompt token ids and image embeddings, ready for the engine.

Invariants:
- The engine thread stays the only user of the text model's ``llama_context``: mtmd encodes with
  its own clip context and only reads the shared ``llama_model`` (vocabulary for tokenising, the
  embedding width), which is safe from any thread. Embeddings reach the engine as numpy arrays
  (``ImageSpan``) and the runner decodes them there.
- One mtmd context is not thread-safe (tokenize preprocesses into it, encode writes its output
  buffer): every mtmd call holds ``_lock``. ``prepare`` runs the CPU-heavy work in a worker
  thread, at most one at a time per projector (``_turn``), so neither the event loop nor the engine
  thread waits for an encode.
- The image marker is random per process, so text a user writes can never be taken for an image;
  the rendered prompt must contain it exactly once per image, in order, or the request is a 400.
  mtmd sees only the marker (one image at a time, with whatever tokens the projector wraps it
  in); the text around it is tokenised by Ferry, so client text stays plain text.
- Only projectors whose images take one position per token in the text model are accepted
  (no M-RoPE); the load fails with a clear error otherwise.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from llama_cpp import mtmd_cpp as mt

from ferry.engine.chat_prompt import tokenize_segments
from ferry.engine.model import Model, _llama_log
from ferry.engine.sequence import ImageSpan
from ferry.errors import InvalidRequest
from ferry.vision.images import ImageInput

log = logging.getLogger(__name__)

_TEXT, _IMAGE = 0, 1  # mtmd_input_chunk_type
PLACEHOLDER_ID = 0  # prompt id under an image; never reused as a prefix (scheduler invariant)
T = TypeVar("T")
Segments = Sequence[tuple[str, bool]]


class Projector:
    def __init__(self, path: str, model: Model, n_threads: int = 1) -> None:
        mt.mtmd_helper_log_set(_llama_log, ctypes.c_void_p(0))  # also sets mtmd_log_set
        self.path = path
        self.model = model
        self.marker = f"<__ferry_image_{secrets.token_hex(8)}__>"
        self._marker_b = self.marker.encode()  # kept alive: mtmd keeps the pointer's string
        p = mt.mtmd_context_params_default()
        p.use_gpu = False
        p.print_timings = False
        p.n_threads = n_threads
        p.warmup = False
        p.media_marker = self._marker_b
        self.ctx = mt.mtmd_init_from_file(path.encode(), model.ptr, p)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp mtmd could not load the projector {path} for this model")
        if not mt.mtmd_support_vision(self.ctx) or mt.mtmd_decode_use_mrope(self.ctx):
            self.close()
            raise RuntimeError(f"{path}: only vision projectors without M-RoPE are supported")
        self._lock = threading.Lock()
        self._turn = asyncio.Semaphore(1)

    async def prepare(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` (which calls ``tokenize``) in a worker thread, one at a time."""
        async with self._turn:
            return await asyncio.to_thread(fn, *args)

    def tokenize(self, prompt: str | Segments, images: list[ImageInput]
                 ) -> tuple[list[int], tuple[ImageSpan, ...]]:
        """Tokenise the prompt (text, or chat segments as ``(text, parse special tokens)``, one
        marker per image, in order) and encode every image. Text between images is tokenised as
        ``tokenize_segments`` does, so client text stays plain (ferry.engine.chat_prompt)."""
        runs = self._runs([(prompt, True)] if isinstance(prompt, str) else prompt)
        if len(runs) != len(images) + 1:
            raise InvalidRequest("the chat template did not keep each image exactly once",
                                 param="messages")
        with self._lock:
            tokens: list[int] = tokenize_segments(self.model, runs[0])
            spans: list[ImageSpan] = []
            for im, run in zip(images, runs[1:]):
                self._image(im, tokens, spans)
                for text, special in run:
                    if text:
                        tokens += self.model.tokenize(text, add_special=False,
                                                      parse_special=special)
            return tokens, tuple(spans)

    def _runs(self, segments: Segments) -> list[list[tuple[str, bool]]]:
        """The segments cut at the image markers: the text before each image, and after the last."""
        runs: list[list[tuple[str, bool]]] = [[]]
        for text, special in segments:
            for j, piece in enumerate(text.split(self.marker) if special else [text]):
                if j:
                    runs.append([])
                runs[-1].append((piece, special))
        return runs

    def _image(self, im: ImageInput, tokens: list[int], spans: list[ImageSpan]) -> None:
        """Append one image (and any tokens the projector wraps it in) at the end of ``tokens``."""
        bitmap = self._bitmap(im)
        chunks = mt.mtmd_input_chunks_init()
        try:
            toks, image_spans = self._tokenize(self.marker, [bitmap], chunks)
        finally:
            mt.mtmd_input_chunks_free(chunks)
            mt.mtmd_bitmap_free(bitmap)
        spans.extend(ImageSpan(s.start + len(tokens), s.embd, s.causal) for s in image_spans)
        tokens.extend(toks)

    def _bitmap(self, im: ImageInput) -> mt.mtmd_bitmap_p:
        buf = (ctypes.c_uint8 * len(im.data)).from_buffer_copy(im.data)
        bitmap = mt.mtmd_helper_bitmap_init_from_buf(self.ctx, buf, len(im.data), False)
        if not bitmap:
            raise InvalidRequest("the image could not be decoded", param=im.param)
        return bitmap

    def _tokenize(self, text: str, bitmaps: list, chunks) -> tuple[list[int], tuple[ImageSpan, ...]]:
        data = text.encode("utf-8", "surrogatepass")
        inp = mt.mtmd_input_text(data, len(data), False, True)  # the image alone: no BOS
        arr = (mt.mtmd_bitmap_p_ctypes * max(len(bitmaps), 1))(*bitmaps)
        rc = mt.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
        if rc != 0:
            raise InvalidRequest(f"the prompt and its images could not be tokenised (mtmd {rc})",
                                 param="messages")
        tokens: list[int] = []
        spans: list[ImageSpan] = []
        n_embd = self.model.n_embd
        for i in range(mt.mtmd_input_chunks_size(chunks)):
            chunk = mt.mtmd_input_chunks_get(chunks, i)
            kind = mt.mtmd_input_chunk_get_type(chunk)
            if kind == _TEXT:
                n = ctypes.c_size_t()
                ptr = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens.extend(ptr[: n.value])
                continue
            if kind != _IMAGE:
                raise InvalidRequest("only images are supported", param="messages")
            n = mt.mtmd_input_chunk_get_n_tokens(chunk)
            if mt.mtmd_encode_chunk(self.ctx, chunk) != 0:
                raise RuntimeError("mtmd could not encode an image")
            out = mt.mtmd_get_output_embd(self.ctx)
            embd = np.ctypeslib.as_array(out, shape=(n * n_embd,)).reshape(n, n_embd).copy()
            causal = not mt.mtmd_decode_use_non_causal(self.ctx, chunk)
            spans.append(ImageSpan(len(tokens), embd, causal))  # embd: [n, n_embd] float32
            tokens.extend([PLACEHOLDER_ID] * n)
        return tokens, tuple(spans)

    def close(self) -> None:
        if self.ctx:
            mt.mtmd_free(self.ctx)
            self.ctx = None
