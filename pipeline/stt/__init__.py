"""The STT WebSocket edge: URLs, headers and connection of one session's socket."""
