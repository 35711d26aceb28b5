"""Project-wide pytest configuration: shared fixtures are registered as plugins here."""

pytest_plugins = ["tests.support.kafka_fixture"]
