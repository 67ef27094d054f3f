"""Client bytes → 16 kHz mono float32 samples, with PyAV (FFmpeg), bounded in length.

Invariants:
- Any file PyAV cannot read, or one with no audio track, raises ``InvalidRequest`` (400).
- Decoding stops as soon as the audio passes ``max_seconds``: a small, highly compressed upload
  cannot expand into gigabytes of samples (1 h is 115 MB of s16, 230 MB as float32).

Mirrors ``faster_whisper.decode_audio`` (same resampler settings, corrupt frames skipped) but
checks the length while decoding instead of after.
"""

from __future__ import annotations

import gc
import io
import itertools
from collections.abc import Iterator

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler

from ferry.errors import InvalidRequest

SAMPLE_RATE = 16_000  # what Whisper expects
FORMATS = "flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav and webm"


def decode(data: bytes, *, max_seconds: float) -> np.ndarray:
    """Samples as float32 in [-1, 1): [n_samples] at SAMPLE_RATE."""
    if not data:
        raise InvalidRequest("the audio file is empty", param="file")
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidRequest("the file has no audio track", param="file")
            resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in itertools.chain(_frames(container), [None]):  # None flushes
                for out in resampler.resample(frame):
                    pcm = out.to_ndarray().reshape(-1)  # s16: [n_samples]
                    total += pcm.size
                    if total > limit:
                        raise InvalidRequest(
                            f"the audio is longer than the limit of {max_seconds:g} seconds",
                            param="file",
                        )
                    chunks.append(pcm)
            del resampler
    except InvalidRequest:
        raise
    except Exception as exc:  # PyAV raises many types (FFmpegError, ValueError, IndexError, ...)
        raise InvalidRequest(
            f"could not decode the audio file ({exc.__class__.__name__}); "
            f"supported formats are {FORMATS}",
            param="file",
        ) from exc
    finally:
        gc.collect()  # PyAV resampler objects are freed only by the cycle collector
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def _frames(container: av.container.InputContainer) -> Iterator[AudioFrame]:
    frames = container.decode(audio=0)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue  # a corrupt frame inside a readable file: skip it, as faster-whisper does
        frame.pts = None  # the resampler must not reject gaps in timestamps
        yield frame
