"""Operator tools around the wire contract: ``produce`` (WAV → `stt.audio`) and ``tail`` (turns → terminal)."""
