from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ferry.engine.detok import TextAssembler


def _run(chunks: list[bytes], stop: list[str]) -> tuple[str, bool]:
    asm = TextAssembler(stop)
    out = []
    for c in chunks:
        out.append(asm.feed(c))
        if asm.stopped:
            break
    out.append(asm.flush())
    return "".join(out), asm.stopped


def test_multibyte_character_split_across_tokens_is_held_until_complete():
    asm = TextAssembler()
    data = "é😀".encode()
    assert asm.feed(data[:1]) == ""
    assert asm.feed(data[1:3]) == "é"
    assert asm.feed(data[3:5]) == ""
    assert asm.feed(data[5:]) == "😀"


def test_stop_string_spanning_tokens_is_never_emitted():
    text, stopped = _run([b"Hello ", b"wor", b"ld", b"!"], ["world"])
    assert text == "Hello "
    assert stopped


def test_held_prefix_of_stop_is_released_when_it_is_not_a_stop():
    asm = TextAssembler(["STOP"])
    assert asm.feed(b"aST") == "a"
    assert asm.feed(b"x") == "STx"


@given(st.text(min_size=0, max_size=40), st.lists(st.integers(1, 6), max_size=20),
       st.sampled_from(["##", "é!", "end", "\n\n"]))
def test_any_split_gives_text_up_to_first_stop(text, sizes, stop):
    data = text.encode()
    chunks, i = [], 0
    for n in sizes:
        chunks.append(data[i:i + n])
        i += n
    chunks.append(data[i:])
    out, stopped = _run(chunks, [stop])
    cut = text.find(stop)
    assert out == (text if cut < 0 else text[:cut])
    assert stopped == (cut >= 0)


def test_the_stop_string_that_matched_first_is_named():
    a = TextAssembler(stop=["lo", "hel", "zz"])
    out = "".join(a.feed(p.encode()) for p in ("he", "llo wor"))
    assert (out, a.stopped, a.matched) == ("", True, "hel")
    b = TextAssembler(stop=["world", "or"])
    out = "".join(b.feed(p.encode()) for p in ("hello w", "orld"))
    assert (out, b.matched) == ("hello ", "world")  # the earliest match, not the shortest
    assert TextAssembler(stop=["x"]).matched is None
