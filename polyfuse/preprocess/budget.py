"""What decoding one record may cost, and until when: checked from the file header before anything
is decoded, and between decoding stages so that abandoned work stops.

Training uses the default (no limits beyond Pillow's own bomb guard); the server builds one per
request from its limits and deadline. The same decoders read it either way.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from polyfuse.errors import DeadlineExceeded, MediaTooLarge

# A header's frame count can be wrong or "unknown" (streams), so decoding also counts what it reads.
AUDIO_BLOCK_FRAMES = 1 << 16


@dataclass
class DecodeBudget:
    """Per-record decode limits (None = no limit) and the deadline of the work they belong to."""

    max_pixels: int | None = None  # width x height of one image, from its header
    max_audio_seconds: float | None = None  # duration of one clip, from its header
    max_audio_rate: int | None = None  # samples per second over all channels (sample rate x channels)
    max_total_bytes: int | None = None  # decoded size of all the media of one request, from headers
    deadline: float | None = None  # time.monotonic() after which the work is abandoned
    declared: int = 0  # decoded bytes the headers seen so far declare (see charge)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Stop the work at its next check (the request was answered without it)."""
        self._cancelled.set()

    def check(self) -> None:
        """Raise DeadlineExceeded when the work is past its deadline or cancelled; cheap enough to
        call between records and stages."""
        if self._cancelled.is_set() or (self.deadline is not None and time.monotonic() > self.deadline):
            raise DeadlineExceeded("decoding stopped: the request ran out of time or was cancelled")

    def check_image(self, width: int, height: int, label: str) -> None:
        """Raise MediaTooLarge for an image whose header declares more pixels than allowed."""
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise MediaTooLarge(f"{label} is {width}x{height} = {width * height} pixels, over the limit of "
                                f"{self.max_pixels}; resize it before sending")

    def check_audio(self, frames: int, sample_rate: int, channels: int, label: str) -> None:
        """Raise MediaTooLarge for a clip whose header declares too many samples per second or seconds."""
        if sample_rate <= 0 or channels <= 0:
            return  # the decoder reports a header this broken with its own message
        rate = sample_rate * channels
        if self.max_audio_rate is not None and rate > self.max_audio_rate:
            raise MediaTooLarge(f"{label} has {channels} channel(s) at {sample_rate} Hz = {rate} samples/s, over the "
                                f"limit of {self.max_audio_rate}; downmix or resample it before sending")
        if self.max_audio_seconds is not None and frames / sample_rate > self.max_audio_seconds:
            raise MediaTooLarge(f"{label} lasts {frames / sample_rate:.1f} s, over the limit of "
                                f"{self.max_audio_seconds:g} s; send a shorter clip")

    def charge(self, nbytes: int, label: str) -> None:
        """Count one value's declared decoded size against the request's total."""
        self.declared += nbytes
        if self.max_total_bytes is not None and self.declared > self.max_total_bytes:
            raise MediaTooLarge(f"with this {label} the request's media would decode to {self.declared >> 20} MB, "
                                f"over the limit of {self.max_total_bytes >> 20} MB; split the request")

    def max_audio_frames(self, sample_rate: int) -> int | None:
        """Frames a clip at ``sample_rate`` may really hold (whatever its header claimed)."""
        if self.max_audio_seconds is None:
            return None
        return int(self.max_audio_seconds * sample_rate) + AUDIO_BLOCK_FRAMES


UNLIMITED = DecodeBudget()  # training and batch prediction: the data is the user's own
