"""Recognition engines for the emulator: `tones` (deterministic codec) and `whisper` (real offline ASR)."""
