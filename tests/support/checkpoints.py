"""Session checkpoints for unit tests of the core: only the fields the core reads vary."""

from __future__ import annotations

from pipeline.contract import Checkpoint, CheckpointStatus


def checkpoint(
    session_id: str,
    status: CheckpointStatus = "open",
    resume_offset: int = 0,
    close_offset: int | None = None,
    next_input_seq: int = 0,
    next_seq: int = 0,
    at: int = 0,
) -> Checkpoint:
    """A session checkpoint with only the fields the core reads set; the rest are fixed."""
    return Checkpoint(
        session_id=session_id,
        status=status,
        resume_offset=resume_offset,
        next_seq=next_seq,
        next_turn=0,
        next_transcript_seq=0,
        next_input_seq=next_input_seq,
        transcript="",
        audio_ms=0.0,
        close_offset=close_offset,
        endpoint="auto",
        encoding="pcm_s16le",
        sample_rate=16000,
        channels=1,
        model="ink-2",
        language=None,
        at=at,
    )
