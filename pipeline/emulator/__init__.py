"""A local server that speaks Cartesia's realtime STT protocol, with pluggable recognition engines."""
