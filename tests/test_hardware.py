"""Hardware settings reach llama.cpp (model and context parameters of the chat, draft and
embedding models, read back from what Ferry handed llama.cpp), the devices llama.cpp sees are
reported, and a q8_0 KV cache really halves the KV bytes with sensible greedy output."""

from __future__ import annotations

import asyncio

import httpx
import llama_cpp as ll
import numpy as np
import pytest

from ferry.app import AppState
from ferry.cli import _parse
from ferry.engine import hardware
from ferry.engine.chat_template import ChatTemplate
from ferry.engine.hardware import Placement
from ferry.engine.model import Model, bundled_model_path
from ferry.engine.runner import Runner, RunnerConfig
from ferry.engine.scheduler import StepPlan, Work
from ferry.engine.sequence import SamplingParams, Sequence
from ferry.services.models import ChatModel, EmbeddingRuntime
from ferry.settings import Settings


@pytest.fixture(scope="module")
def smol() -> Model:
    m = Model(bundled_model_path())
    yield m
    m.close()


def load(state: AppState, kind: str):
    """Load the configured model of ``kind`` the way the server does (registry, engine thread)."""
    reg = state.models
    reg._loop = asyncio.new_event_loop()
    spec = next(s.spec for s in reg.entries.values() if s.spec.kind == kind)
    return reg._load_sync(spec)


def test_hardware_flags_reach_llama_cpp_for_chat_draft_and_embedding_models():
    path = bundled_model_path()
    s = _parse(Settings, ["--n-gpu-layers", "7", "--main-gpu", "0", "--tensor-split", "1",
                          "--flash-attn", "on", "--cache-type-k", "q8_0", "--cache-type-v", "q4_0",
                          "--no-mmap", "--mlock", "--parallel", "1", "--speculative", "draft",
                          "--draft-model", path, "--model", path])
    state = AppState(s)
    cm = load(state, "chat")
    assert isinstance(cm, ChatModel)
    try:
        for model, runner in ((cm.model, cm.engine.runner),
                              (cm.engine.draft.model, cm.engine.draft.runner)):
            mp, cp = model.params, runner.params
            assert mp.n_gpu_layers == 7 and mp.main_gpu == 0 and mp.tensor_split[0] == 1.0
            assert mp.load_mode == ll.LLAMA_LOAD_MODE_MLOCK  # no mmap, locked in RAM
            assert cp.flash_attn_type == ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
            assert (cp.type_k, cp.type_v) == (ll.GGML_TYPE_Q8_0, ll.GGML_TYPE_Q4_0)
            assert ll.llama_n_ctx(runner.ctx) >= 2048  # a context was made with them
    finally:
        cm.engine.stop()
        cm.model.close()
    emb = load(state, "embedding")
    assert isinstance(emb, EmbeddingRuntime)
    try:
        enc = emb.model._encoder
        assert enc.params.n_gpu_layers == 7 and enc.params.load_mode == ll.LLAMA_LOAD_MODE_MLOCK
        assert emb.model.embed(["hello"])[0].shape[0] == 1
    finally:
        emb.model.close()


def test_defaults_offload_every_layer_only_when_llama_cpp_has_a_gpu_backend(smol):
    assert smol.params.n_gpu_layers == (-1 if ll.llama_supports_gpu_offload() else 0)
    assert smol.params.load_mode == ll.LLAMA_LOAD_MODE_MMAP
    assert Placement(use_mmap=True, use_mlock=True).load_mode() == ll.LLAMA_LOAD_MODE_MMAP_MLOCK
    assert Placement(use_mmap=False).load_mode() == ll.LLAMA_LOAD_MODE_NONE


def test_devices_are_the_ones_llama_cpp_enumerates():
    devs = hardware.devices()
    assert devs and any(d.type == "cpu" for d in devs)
    cpu = next(d for d in devs if d.type == "cpu")
    assert cpu.backend == "CPU" and cpu.memory_total > 0
    if not ll.llama_supports_gpu_offload():  # this machine: a CPU-only build
        assert hardware.backend_name() == "CPU" and hardware.gpus() == []
    assert hardware.summary_line().startswith(f"llama.cpp backend {hardware.backend_name()}")


def test_health_and_the_startup_log_name_backend_and_devices(server):
    body = httpx.get(server.url + "/health", timeout=30).json()
    hw = body["hardware"]
    assert hw["backend"] == hardware.backend_name()
    assert hw["gpu_offload"] == bool(ll.llama_supports_gpu_offload())
    assert [d["name"] for d in hw["devices"]] == [d.name for d in hardware.devices()]
    assert f"llama.cpp backend {hw['backend']}; devices: " in server.log()


def greedy(model: Model, cache_type: str, prompt: list[int], n: int) -> tuple[int, list[int]]:
    """KV bytes of one slot holding ``prompt``, and up to ``n`` greedy tokens after it, on a
    context whose K and V caches are ``cache_type``."""
    cfg = RunnerConfig(2048, 1, 1, 512, Placement(cache_type_k=cache_type,
                                                  cache_type_v=cache_type))
    runner = Runner(model, cfg)
    try:
        seq = Sequence(prompt, SamplingParams(), n, lambda o: None)
        seq.slot = 0
        out: list[int] = []
        work = Work(seq, prompt, 0, True)
        kv_bytes = 0
        for _ in range(n):
            rows = runner.run(StepPlan(work=[work]))
            kv_bytes = kv_bytes or ll.llama_state_seq_get_size(runner.ctx, 0)  # the prompt's
            tok = int(np.argmax(runner.logits(rows[seq.id])))
            if tok in model.eog_ids:
                break
            out.append(tok)
            work = Work(seq, [tok], work.pos + len(work.tokens), True)
        return kv_bytes, out
    finally:
        runner.close()


def test_q8_0_kv_cache_halves_the_kv_bytes_and_keeps_greedy_output_sensible(smol):
    tpl = ChatTemplate(smol.chat_template, smol.bos_text, smol.eos_text)

    def prompt(question: str) -> list[int]:
        return smol.tokenize(tpl.render([{"role": "user", "content": question}]))

    f16_bytes, _ = greedy(smol, "f16", prompt("What is 2 + 2?"), 24)
    q8_bytes, q8_sum = greedy(smol, "q8_0", prompt("What is 2 + 2?"), 24)
    q4_bytes, _ = greedy(smol, "q4_0", prompt("What is 2 + 2?"), 24)
    # per value: f16 2 bytes; q8_0 34 bytes per block of 32 (0.53); q4_0 18 per 32 (0.28)
    assert 0.5 <= q8_bytes / f16_bytes <= 0.56, (q8_bytes, f16_bytes)
    assert 0.27 <= q4_bytes / f16_bytes <= 0.32, (q4_bytes, f16_bytes)
    assert "4" in smol.detokenize(q8_sum)
    _, q8_colors = greedy(smol, "q8_0", prompt("Name three colors."), 24)
    colors = smol.detokenize(q8_colors)
    assert sum(c in colors for c in ("Red", "Blue", "Green", "Yellow")) >= 2, colors
