"""stt-pipeline: Kafka audio topics → paced STT WebSockets → normalized turn events and transcripts."""

from importlib import metadata

DISTRIBUTION = "stt-pipeline"
"""The distribution name (PyPI, ``pip install``), also the command's name and the User-Agent's product."""

try:
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
