"""The engine thread against real llama.cpp: a KV memory that refuses partial removals (as
recurrent and hybrid models do; sliding-window layers sometimes) costs recomputation, never
correctness."""

from __future__ import annotations

import asyncio

import llama_cpp as ll
import pytest

from ferry.app import engine_config
from ferry.engine.chat_template import ChatTemplate
from ferry.engine.engine import Engine
from ferry.engine.model import Model, bundled_model_path
from ferry.engine.sequence import Output, SamplingParams
from ferry.settings import Settings


@pytest.fixture(scope="module")
def smol() -> Model:
    m = Model(bundled_model_path())
    yield m
    m.close()


def refuse_partial_removal(engine: Engine) -> list[int]:
    """Make the runner's memory keep a slot's cells only whole (a recurrent model's rule);
    returns a list that counts the scheduler's ``kv_lost`` calls."""
    runner, sched, lost = engine.runner, engine.scheduler, []

    def keepable(slot: int, keep: int) -> int:
        return keep if keep > ll.llama_memory_seq_pos_max(runner.mem, slot) else 0

    def kv_lost(seq, kept: int, _orig=sched.kv_lost) -> None:
        lost.append(kept)
        _orig(seq, kept)

    runner.keepable = keepable  # type: ignore[method-assign]
    sched.kv_keep = keepable
    sched.kv_lost = kv_lost  # type: ignore[method-assign]
    return lost


async def generate(engine: Engine, prompt: list[int], params: SamplingParams, n: int
                   ) -> tuple[list[int], Output]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Output] = loop.create_future()
    tokens: list[int] = []

    def sink(o: Output) -> None:
        tokens.extend(o.token_ids)
        if o.finish_reason:
            done.set_result(o)

    engine.submit(prompt, params, n, sink)
    return tokens, await asyncio.wait_for(done, 300)


def test_refused_trims_after_rejected_drafts_recompute_and_keep_greedy_output(smol):
    tpl = ChatTemplate(smol.chat_template, smol.bos_text, smol.eos_text)
    # a confident answer (greedy ties would flip on batch-shape float noise, ~0.5 in a logit)
    # that repeats itself, so prompt-lookup drafts are made and some are rejected
    question = "List the days of the week, then list them again in reverse order."
    prompt = smol.tokenize(tpl.render([{"role": "user", "content": question}]))

    async def run() -> None:
        engine = Engine(smol, engine_config(Settings(ctx_size=4096, parallel=2, threads=1,
                                                     speculative="ngram", draft_max=6)))
        lost = refuse_partial_removal(engine)
        engine.start(asyncio.get_running_loop())
        try:
            plain, _ = await generate(engine, prompt, SamplingParams(temperature=0,
                                                                     speculative=False), 48)
            spec, out = await generate(engine, prompt, SamplingParams(temperature=0), 48)
            # the same prompt again: its slot's prefix cannot be trimmed to, so no reuse either
            again, out2 = await generate(engine, prompt, SamplingParams(temperature=0,
                                                                        speculative=False), 48)
        finally:
            engine.stop()
        assert out.num_drafted_tokens > out.num_accepted_tokens  # some drafts were rejected
        assert lost and set(lost) == {0}  # ... their trims refused: recomputed from 0
        assert spec == plain and again == plain
        assert out2.num_cached_tokens == 0

    asyncio.run(run())


def test_a_sequence_moved_to_close_a_gap_in_the_ids_generates_what_it_would_have(smol):
    # four streams on ids 0-3; the one on id 1 ends first and nothing waits: the sequence on id 3
    # moves into id 1 (its KV copied through the state API) and must go on exactly as before
    tpl = ChatTemplate(smol.chat_template, smol.bos_text, smol.eos_text)
    questions = ["Count from one to thirty in words.", "List the days of the week.",
                 "List the months of the year, then list them again in reverse order.",
                 "Write the English alphabet, one letter per line, then again backwards."]
    prompts = sorted((smol.tokenize(tpl.render([{"role": "user", "content": q}]))
                      for q in questions), key=len)  # admitted fewest tokens first: ids 0-3
    greedy = SamplingParams(temperature=0, ignore_eos=True)

    async def run(close_gaps: bool) -> tuple[list[list[int]], int]:
        engine = Engine(smol, engine_config(Settings(ctx_size=4096, parallel=4, threads=2)))
        engine.scheduler.close_gaps, engine.scheduler.gap_patience = close_gaps, 2
        engine.start(asyncio.get_running_loop())
        try:
            outs = await asyncio.gather(*(generate(engine, p, greedy, 6 if i == 1 else 40)
                                          for i, p in enumerate(prompts)))
        finally:
            engine.stop()
        return [tokens for tokens, _ in outs], engine.scheduler.stats.moves

    kept, no_moves = asyncio.run(run(False))
    moved, moves = asyncio.run(run(True))
    assert no_moves == 0 and moves == 1
    assert moved == kept
