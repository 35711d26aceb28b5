"""Create the worker's topics when they are missing, or fail with a message that says why."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from pipeline.errors import KafkaSetupError
from pipeline.kafka.clients import KafkaAuthError, diagnose, kafka_options
from pipeline.settings import Settings

log = logging.getLogger("pipeline.kafka.topics")
TOPIC_ALREADY_EXISTS = 36


class TopicSetupError(KafkaSetupError):
    """The worker's topics are missing and could not be created."""


def wanted_topics(config: Settings) -> list[NewTopic]:
    """All topics, same partition count (stt.sessions must be co-partitioned with stt.audio)."""
    retained = {"retention.ms": str(config.retention_ms)}
    compacted = {"cleanup.policy": "compact"}
    specs = [
        (config.audio_topic, retained),
        (config.turns_topic, retained),
        (config.transcripts_topic, retained),
        (config.dead_letter_topic, retained),
        (config.sessions_topic, compacted),
    ]
    return [
        NewTopic(name, config.topic_partitions, config.topic_replication, topic_configs=cfg) for name, cfg in specs
    ]


async def ensure_topics(config: Settings) -> list[str]:
    """Create the missing topics; returns the names created. Raises :class:`TopicSetupError`."""
    admin = AIOKafkaAdminClient(**kafka_options(config, "admin"))
    try:
        await admin.start()
    except Exception as exc:
        await admin.close()
        problem = await diagnose(config)
        if isinstance(problem, KafkaAuthError):
            raise problem from exc
        raise TopicSetupError(str(problem)) from exc
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted_topics(config) if t.name not in existing]
        if not missing:
            return []
        if not config.create_topics:
            names = ", ".join(t.name for t in missing)
            raise TopicSetupError(f"topics missing and topic creation is disabled (STT_CREATE_TOPICS): {names}")
        response = await admin.create_topics(missing)
        failures = []
        for entry in response.topic_errors:
            topic, code = entry[0], entry[1]
            if code and code != TOPIC_ALREADY_EXISTS:
                message = entry[2] if len(entry) > 2 and entry[2] else for_code(code).__name__
                failures.append(f"{topic}: {message} (error {code})")
        if failures:
            raise TopicSetupError(
                "cannot create topics (does this principal have CREATE on the cluster?): " + "; ".join(failures)
            )
        created = [t.name for t in missing]
        log.info("created topics %s", ", ".join(created))
        return created
    finally:
        await admin.close()


async def topic_limits(config: Settings) -> dict[str, int]:
    """``max.message.bytes`` of the output topics, for the size budget (needs DescribeConfigs).

    A topic whose limit cannot be read is left out; the budget then assumes the broker's default.
    """
    topics = [config.turns_topic, config.transcripts_topic, config.dead_letter_topic, config.sessions_topic]
    admin = AIOKafkaAdminClient(**kafka_options(config, "admin"))
    limits: dict[str, int] = {}
    try:
        await admin.start()
        resources = [ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in topics]
        for response in await admin.describe_configs(resources):
            for resource in response.resources:
                _, _, _, name, entries = resource[:5]
                for entry in entries:
                    if entry[0] == "max.message.bytes" and entry[1] is not None:
                        limits[name] = int(entry[1])
    except Exception as exc:
        log.warning("cannot read max.message.bytes of %s (%r); assuming the broker default", topics, exc)
    finally:
        await admin.close()
    return limits
