"""The engine thread: ``schedule() -> run() -> postprocess()`` in a loop, bridged to asyncio.

Invariants:
- One thread per loaded model calls llama.cpp; the asyncio side never blocks on it. Requests enter
  through ``submit`` (any thread) and results leave through one ``call_soon_threadsafe`` per step.
- A cancelled sequence leaves within one step: its slot is released and its sampler freed.
- Every sequence gets exactly one Output with a ``finish_reason`` and nothing after it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from ferry.engine import sampling
from ferry.engine.detok import TextAssembler
from ferry.engine.draft import DraftModel, ModelDrafter
from ferry.engine.hardware import Placement
from ferry.engine.model import Model
from ferry.engine.ngram import NGramDrafter
from ferry.engine.runner import LLAMA_MAX_SEQ, Runner, RunnerConfig, default_pool_cells
from ferry.engine.scheduler import Scheduler, StepPlan
from ferry.engine.sequence import ImageSpan, Output, SamplingParams, Sequence
from ferry.errors import Overloaded

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Filled from ferry.settings.Settings (ferry.app.AppState.engine_config): no defaults here,
    so every default lives in Settings."""

    n_ctx: int
    n_slots: int
    n_threads: int
    n_batch: int
    prefill_chunk: int
    max_queue: int
    queue_timeout: float | None
    speculative: str  # "none" | "ngram" | "draft"
    draft_max: int
    draft_model: str | None  # GGUF path, for speculative == "draft"
    placement: Placement = field(default_factory=Placement)  # GPU offload, KV types (hardware.py)
    ctx_per_slot: int = 2048  # n_ctx 0: at least this many cells per slot (default_pool_cells)
    cache_ram_mib: int = 0  # prompt cache in host RAM (0: only what stays in the KV pool)
    kv_unified: bool = False  # one KV pool for all sequences (else a stream per slot)
    prefill_chunk_backlog: int | None = None  # the chunk while requests wait (None: prefill_chunk)


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """A snapshot for /health and /metrics."""

    running: int
    waiting: int
    kv_cells_used: int
    n_ctx_seq: int
    slots: int
    prefix_hits: int
    speculative: dict[str, int]  # tokens drafted / accepted
    step_python_us: dict[int, float]  # mean Python time per step (µs) by sequences in the step
    kv_pool_cells: int = 0  # KV cells of all sequences together
    prompt_cache: dict | None = None  # PromptCache.status(): entries/bytes per tier, hits, ...


@dataclass(slots=True)
class StepTimes:
    """Per-step timings, for /metrics and the benchmark's overhead report."""

    steps: int = 0
    decode_s: float = 0.0
    python_s: float = 0.0  # step wall time minus llama_decode (sampling in C included)
    by_batch: dict[int, list[float]] = field(default_factory=dict)  # n_seqs -> [sum_py_s, count]

    def record(self, n_seqs: int, total: float, decode: float) -> None:
        self.steps += 1
        self.decode_s += decode
        self.python_s += total - decode
        acc = self.by_batch.setdefault(n_seqs, [0.0, 0])
        acc[0] += total - decode
        acc[1] += 1


class Engine:
    def __init__(self, model: Model, cfg: EngineConfig) -> None:
        self.model = model
        self.cfg = cfg
        n_ctx = cfg.n_ctx or default_pool_cells(model, cfg.n_slots * cfg.ctx_per_slot)
        # unified: ids beyond the running sequences hold prompt-cache entries in the pool; else
        # the cache's pool tier is the idle slots' streams
        n_ids = min(LLAMA_MAX_SEQ, 4 * cfg.n_slots + 8) if cfg.kv_unified else cfg.n_slots
        rcfg = RunnerConfig(n_ctx, cfg.n_slots, cfg.n_threads, cfg.n_batch, cfg.placement,
                            n_seq_max=n_ids, kv_unified=cfg.kv_unified)
        self.runner = Runner(model, rcfg)
        self.n_ctx_seq = min(self.runner.n_ctx_seq, model.n_ctx_train or self.runner.n_ctx_seq)
        headroom = 1 + (cfg.draft_max if cfg.speculative != "none" else 0)
        self.scheduler = Scheduler(cfg.n_slots, cfg.n_batch, cfg.prefill_chunk, cfg.queue_timeout,
                                   self.n_ctx_seq, kv=self.runner, n_seq_ids=rcfg.n_seq_max,
                                   pool_cells=self.runner.n_ctx if cfg.kv_unified else None,
                                   ram_budget=cfg.cache_ram_mib << 20, headroom=headroom,
                                   kv_keep=self.runner.keepable,
                                   # a stream per id (a batch is cut at gaps in the ids); the draft
                                   # model's slots mirror the target's, so its ids stay put
                                   close_gaps=not cfg.kv_unified and cfg.speculative != "draft",
                                   backlog_chunk=cfg.prefill_chunk_backlog)
        self.draft: DraftModel | None = None
        if cfg.speculative == "draft":
            if not cfg.draft_model:
                raise ValueError("--speculative draft needs --draft-model")
            self.draft = DraftModel(Model(cfg.draft_model, cfg.placement), model, rcfg)
        self.times = StepTimes()
        self.tokens_generated = 0
        self.spec_drafted = 0
        self.spec_accepted = 0
        self.tokens_prompt = 0
        self._inbox: deque[Sequence] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._eog_bias = {t: float("-inf") for t in model.eog_ids}
        # ferry.metrics.EngineObserver (latency histograms), set by the model registry; None = off
        self.observer: Any = None
        # called on the event loop after a step that finished sequences (the registry waits on it)
        self.on_finish: Callable[[], None] | None = None
        self._last_token: dict[int, float] = {}  # seq id -> time of its last token (for ITL)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="ferry-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.runner.close()
        if self.draft is not None:
            self.draft.close()

    # ---- asyncio side ----------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting + len(self._inbox)

    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    def submit(self, prompt: list[int], params: SamplingParams, max_tokens: int,
               sink: Callable[[Output], None], images: tuple[ImageSpan, ...] = (),
               cache_ns: Hashable = "") -> Sequence:
        """Queue one sequence; ``sink`` is called on the event loop with each Output.
        ``images``: prompt spans given as embeddings, already encoded (see Sequence).
        ``cache_ns``: the prompt-cache namespace (only its own cached prefixes are reused)."""
        # queued = sequences that will not get a slot at the next step (read without a lock:
        # off by one at worst, and only at the boundary)
        queued = self.num_waiting - self.scheduler.num_free_slots
        if queued >= self.cfg.max_queue:
            raise Overloaded("the server is at capacity; retry shortly",
                             headers={"Retry-After": "1"})
        if params.ignore_eos:
            params.logit_bias = {**self._eog_bias, **params.logit_bias}
        seq = Sequence(prompt, params, max_tokens, sink, arrival=time.monotonic(), images=images,
                       cache_ns=cache_ns)
        self._inbox.append(seq)
        self._wake.set()
        return seq

    def cancel(self, seq: Sequence) -> None:
        seq.cancelled = True
        self._wake.set()

    # ---- engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            if not self._inbox and not self.scheduler.has_work():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception:  # a bug must not kill the thread silently: fail what runs, go on
                log.exception("engine step failed")
                self._fail_all("internal error in the engine")

    def step(self) -> None:
        t0 = time.perf_counter()
        while self._inbox:
            seq = self._inbox.popleft()
            self._prepare(seq)
            self.scheduler.add(seq)
        decode_s = 0.0
        if self.draft is not None:
            td = time.perf_counter()
            self.draft.prepare([s for s in self.scheduler.running
                                if s.drafter is not None and not s.in_prefill and not s.cancelled],
                               live=self.scheduler.running)
            decode_s = time.perf_counter() - td
        plan = self.scheduler.schedule(time.monotonic())
        out: list[tuple[Callable[[Output], None], Output]] = []
        for seq in plan.cancelled:
            out.append((seq.sink, self._final(seq, "", "cancelled")))
            self._release(seq)
        for seq in plan.expired:
            out.append((seq.sink, self._final(seq, "", "queue_timeout")))
            self._release(seq)
        for seq in plan.failed:
            o = self._final(seq, "", "error")
            o.error = "the preempted sequence could not be resumed"
            out.append((seq.sink, o))
            self._release(seq)
        for seq, _slot in plan.preempted:
            if isinstance(seq.drafter, ModelDrafter):
                seq.drafter.kv = None  # its draft cells are cleared when it runs again
        for w in plan.work:
            if w.seq.detok is None:
                self._admitted(w.seq)
        if plan.work:
            td = time.perf_counter()
            rows = self.runner.run(plan)
            decode_s += time.perf_counter() - td
            self._postprocess(plan, rows, out)
        self._deliver(out)
        if plan.work:
            self.times.record(len(plan.work), time.perf_counter() - t0, decode_s)

    def _prepare(self, seq: Sequence) -> None:
        """Sampler, constraint and drafter, made before the sequence is queued (engine thread)."""
        seq.sampler = sampling.make_sampler(seq.params, self.model.n_vocab)
        seq.greedy_argmax = sampling.argmax_is_exact(seq.params)
        if seq.params.constraint is not None:
            seq.constraint = seq.params.constraint()
        # Drafts are verified by the request's own sampler, one draw per emitted token, which is
        # exact for greedy and sampled requests alike (speculative.py explains why).
        if seq.params.speculative and self.cfg.speculative == "ngram":
            seq.drafter = NGramDrafter(self.cfg.draft_max)
            seq.drafter.extend(seq.prompt)
        elif seq.params.speculative and self.draft is not None:
            seq.drafter = self.draft.drafter(self.cfg.draft_max)

    def _admitted(self, seq: Sequence) -> None:
        """First step with a slot: prefix-cache accounting is known now."""
        seq.detok = TextAssembler(seq.params.stop)
        self.tokens_prompt += len(seq.prompt) - seq.num_cached
        if self.observer is not None:
            self.observer.queue.observe(time.monotonic() - seq.arrival)

    def _postprocess(self, plan: StepPlan, rows: dict[int, int],
                     out: list[tuple[Callable[[Output], None], Output]]) -> None:
        now = time.monotonic()  # one clock read per step: TTFT/ITL resolution is one step
        for w in plan.work:
            seq = w.seq
            row = rows.get(seq.id)
            # tokens before the drafted ones are now in KV; a draft token joins only once verified
            seq.num_computed = w.pos + len(w.tokens) - len(w.draft)
            if row is None:
                continue
            self._observe_token(seq, now)
            texts: list[str] = []
            toks: list[int] = []
            lps: list | None = [] if seq.params.logprobs else None
            finish = None
            for i in range(w.n_logits):  # verify drafts in order; stop at the first miss
                tok, lp, text, finish = self._next_token(seq, row + i)
                toks.append(tok)
                texts.append(text)
                if lps is not None and lp is not None:
                    lps.append(lp)
                if finish is not None or i == len(w.draft) or tok != w.draft[i]:
                    break
                seq.num_computed += 1  # draft token i was right: its KV cell stays
            if w.draft:
                assert seq.drafter is not None  # only drafters' sequences get drafts
                seq.drafter.record(len(w.draft), len(toks) - 1)
                self.spec_drafted += len(w.draft)
                self.spec_accepted += len(toks) - 1
                if finish is None and len(toks) - 1 < len(w.draft):  # drop the rejected drafts
                    assert seq.slot is not None  # a running sequence owns its slot
                    kept = self.runner.trim(seq.slot, seq.num_computed)
                    if kept < seq.num_computed:  # the memory refused: recompute what it held
                        self.scheduler.kv_lost(seq, kept)
            text = "".join(texts)
            if finish is not None:
                if self.observer is not None:
                    self.observer.e2e.observe(now - seq.arrival)
                self.scheduler.finish(seq, finish)
                out.append((seq.sink, self._final(seq, text, finish, lps or None, toks)))
                self._release(seq)
            else:
                out.append((seq.sink, Output(text, toks, lps or None, None, len(seq.prompt),
                                             len(seq.generated), seq.num_cached)))

    def _observe_token(self, seq: Sequence, now: float) -> None:
        obs = self.observer
        if seq.first_token_time is None:
            seq.first_token_time = now
            if obs is not None:
                obs.ttft.observe(now - seq.arrival)
        elif obs is not None:
            obs.itl.observe(now - self._last_token.get(seq.id, now))
        if obs is not None:
            self._last_token[seq.id] = now

    def _next_token(self, seq: Sequence, row: int):
        """Sample one token from ``row``; returns (token, logprob, text, finish_reason)."""
        model = self.model
        c = seq.constraint
        logits = self.runner.logits(row) if (c is not None or seq.params.logprobs) else None
        if c is not None:
            c.apply(logits)
        if seq.greedy_argmax:
            tok = int((self.runner.logits(row) if logits is None else logits).argmax())
            if tok in seq.params.logit_bias:  # a negative bias may demote it: the chain decides
                tok = self.runner.sample(seq.sampler, row)
        else:
            tok = self.runner.sample(seq.sampler, row)
        if c is not None:
            c.accept(tok)
        lp = None
        if seq.params.logprobs and tok not in model.eog_ids:
            assert logits is not None  # read above when logprobs are asked for
            lp = sampling.token_logprob(logits, tok, seq.params.top_logprobs, model.pieces)
        self.tokens_generated += 1
        if tok in model.eog_ids:
            return tok, lp, seq.detok.flush(), "stop"
        seq.generated.append(tok)
        if seq.drafter is not None:
            seq.drafter.extend([tok])
        text = seq.detok.feed(model.text_pieces[tok])
        if seq.detok.stopped or (c is not None and c.is_complete()):
            return tok, lp, text + seq.detok.flush(), "stop"
        if len(seq.generated) >= seq.max_tokens or seq.num_computed + 1 >= self.n_ctx_seq:
            return tok, lp, text + seq.detok.flush(), "length"
        return tok, lp, text, None

    def _final(self, seq: Sequence, text: str, reason: str, lp=None, toks=None) -> Output:
        o = Output(text, toks or [], lp, reason, len(seq.prompt), len(seq.generated),
                   seq.num_cached)
        if seq.detok is not None and seq.detok.stopped:
            o.stop_sequence = seq.detok.matched
        if seq.drafter is not None:
            o.num_drafted_tokens = seq.drafter.policy.total_drafted
            o.num_accepted_tokens = seq.drafter.policy.total_accepted
        return o

    def _release(self, seq: Sequence) -> None:
        sampling.free_sampler(seq.sampler)
        self._last_token.pop(seq.id, None)
        seq.sampler = None
        seq.constraint = None
        seq.drafter = None

    def _fail_all(self, message: str) -> None:
        out = []
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self.scheduler.finish(seq, "error")
            self._release(seq)
            o = self._final(seq, "", "error")
            o.error = message
            out.append((seq.sink, o))
        self.scheduler.free_ids += self.scheduler.cache.clear()
        for slot in range(self.runner.n_seq_max):
            self.runner.clear_slot(slot)
            if self.draft is not None:
                self.draft.clear(slot)
        self._deliver(out)

    def _deliver(self, out: list[tuple[Callable[[Output], None], Output]]) -> None:
        if out and self._loop is not None and not self._loop.is_closed():
            finished = self.on_finish if any(o.finish_reason for _, o in out) else None
            self._loop.call_soon_threadsafe(_dispatch, out, finished)

    def kv_cells_used(self) -> int:
        """Cells of running sequences and of prompt-cache entries in the pool."""
        return (sum(s.num_computed for s in self.scheduler.running)
                + self.scheduler.cache.pool_cells)

    def status(self) -> EngineStatus:
        return EngineStatus(
            running=self.num_running, waiting=self.num_waiting,
            kv_cells_used=self.kv_cells_used(), n_ctx_seq=self.n_ctx_seq, slots=self.cfg.n_slots,
            prefix_hits=self.scheduler.stats.prefix_hits,
            speculative={"drafted": self.spec_drafted, "accepted": self.spec_accepted},
            step_python_us={n: round(v[0] / v[1] * 1e6, 1)
                            for n, v in sorted(self.times.by_batch.items()) if v[1]},
            kv_pool_cells=self.runner.n_ctx, prompt_cache=self.scheduler.cache.status())


def _dispatch(out: list[tuple[Callable[[Output], None], Output]],
              finished: Callable[[], None] | None) -> None:
    for sink, o in out:
        try:
            sink(o)
        except Exception:  # one broken consumer must not starve the others
            log.exception("output sink failed")
    if finished is not None:
        finished()
