"""Where the weights and the KV cache live: the devices llama.cpp sees, and the load and context
options every llama.cpp model Ferry loads (chat, draft, embedding) is given.

Invariants:
- ``Placement`` is the one translation of the hardware settings (``--n-gpu-layers``,
  ``--main-gpu``, ``--tensor-split``, ``--flash-attn``, ``--cache-type-k/v``, ``--no-mmap``,
  ``--mlock``) into ``llama_model_params`` / ``llama_context_params``; nothing else sets those
  fields, so a model loaded anywhere gets the same placement.
- ``n_gpu_layers`` None means every layer when llama.cpp was built with a GPU backend
  (``llama_supports_gpu_offload``) and none otherwise.
- Devices are read through ggml's backend registry, the one llama.cpp offloads to.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import llama_cpp as ll
from llama_cpp import _ggml

CACHE_TYPES = {"f16": ll.GGML_TYPE_F16, "q8_0": ll.GGML_TYPE_Q8_0, "q4_0": ll.GGML_TYPE_Q4_0}
FLASH_ATTN = {"auto": ll.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": ll.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": ll.LLAMA_FLASH_ATTN_TYPE_DISABLED}
_DEV_TYPES = ("cpu", "gpu", "igpu", "accel", "meta")  # enum ggml_backend_dev_type

_g = _ggml.libggml
_g.ggml_backend_dev_count.restype = ctypes.c_size_t
_g.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
_g.ggml_backend_dev_get.restype = ctypes.c_void_p
for _name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
    getattr(_g, _name).argtypes = [ctypes.c_void_p]
    getattr(_g, _name).restype = ctypes.c_char_p
_g.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
_g.ggml_backend_dev_type.restype = ctypes.c_int
_g.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                       ctypes.POINTER(ctypes.c_size_t)]
_g.ggml_backend_dev_memory.restype = None
_g.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
_g.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
_g.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
_g.ggml_backend_reg_name.restype = ctypes.c_char_p


@dataclass(frozen=True, slots=True)
class Device:
    name: str  # "CPU", "CUDA0", "Metal", "Vulkan0"
    description: str
    type: str  # cpu | gpu | igpu | accel
    backend: str  # the ggml backend that drives it: "CPU", "CUDA", "Metal", "Vulkan"
    memory_total: int  # bytes
    memory_free: int


def devices() -> list[Device]:
    """Every device llama.cpp can place tensors on, in ggml's order (GPUs first)."""
    out = []  # ggml registers its compiled-in backends on first use
    for i in range(_g.ggml_backend_dev_count()):
        dev = _g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        _g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = _g.ggml_backend_dev_type(dev)
        out.append(Device(
            name=_g.ggml_backend_dev_name(dev).decode(),
            description=(_g.ggml_backend_dev_description(dev) or b"").decode().strip(),
            type=_DEV_TYPES[kind] if 0 <= kind < len(_DEV_TYPES) else str(kind),
            backend=_g.ggml_backend_reg_name(_g.ggml_backend_dev_backend_reg(dev)).decode(),
            memory_total=total.value, memory_free=free.value))
    return out


def gpus() -> list[Device]:
    """The devices ``--main-gpu`` and ``--tensor-split`` index (dedicated and integrated GPUs)."""
    return [d for d in devices() if d.type in ("gpu", "igpu")]


def supports_gpu_offload() -> bool:
    return bool(ll.llama_supports_gpu_offload())


def backend_name() -> str:
    """The accelerator backend llama.cpp offloads to ("CUDA", "Metal", "Vulkan"), or "CPU"."""
    return next((d.backend for d in gpus()), "CPU")


def summary() -> dict[str, Any]:
    """For /health and the start-up line."""
    return {"backend": backend_name(), "gpu_offload": supports_gpu_offload(),
            "devices": [{"name": d.name, "description": d.description, "type": d.type,
                         "memory_total": d.memory_total, "memory_free": d.memory_free}
                        for d in devices()]}


def summary_line() -> str:
    s = summary()
    devs = ", ".join(f"{d['name']} ({d['description']})" for d in s["devices"]) or "none"
    return f"llama.cpp backend {s['backend']}; devices: {devs}"


@dataclass(frozen=True, slots=True)
class Placement:
    n_gpu_layers: int | None = None  # None: all when a GPU backend is present, else 0; -1: all
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    flash_attn: str = "auto"  # auto | on | off
    cache_type_k: str = "f16"  # f16 | q8_0 | q4_0
    cache_type_v: str = "f16"
    use_mmap: bool = True
    use_mlock: bool = False

    @classmethod
    def from_settings(cls, s: Any) -> Placement:
        return cls(s.n_gpu_layers, s.main_gpu, tuple(s.tensor_split), s.flash_attn,
                   s.cache_type_k, s.cache_type_v, s.mmap, s.mlock)

    def gpu_layers(self) -> int:
        if self.n_gpu_layers is None:
            return -1 if supports_gpu_offload() else 0
        return self.n_gpu_layers

    def load_mode(self) -> int:
        if self.use_mmap:
            return ll.LLAMA_LOAD_MODE_MMAP_MLOCK if self.use_mlock else ll.LLAMA_LOAD_MODE_MMAP
        return ll.LLAMA_LOAD_MODE_MLOCK if self.use_mlock else ll.LLAMA_LOAD_MODE_NONE

    def model_params(self) -> tuple[ll.llama_model_params, Any]:
        """Model load parameters, and an object the caller keeps alive as long as the model
        (the tensor-split array the parameters point to)."""
        p = ll.llama_model_default_params()
        p.n_gpu_layers = self.gpu_layers()
        p.main_gpu = self.main_gpu
        p.load_mode = self.load_mode()
        keep = None
        if self.tensor_split:
            keep = (ctypes.c_float * ll.llama_max_devices())(*self.tensor_split)
            p.tensor_split = keep
        return p, keep

    def apply(self, p: ll.llama_context_params, *, kv_cache: bool = True) -> None:
        """Set the context fields this placement owns: flash attention, and the KV-cache types
        (``kv_cache`` False: an encoder, which keeps no KV cache)."""
        p.flash_attn_type = FLASH_ATTN[self.flash_attn]
        if kv_cache:
            p.type_k = CACHE_TYPES[self.cache_type_k]
            p.type_v = CACHE_TYPES[self.cache_type_v]
