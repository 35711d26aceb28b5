# stt-pipeline — every target installs what it needs; `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA_PORT ?= 9092
EMULATOR_PORT ?= 8080
# plaintext, sasl_ssl (SCRAM-SHA-512 over TLS, ACLs) or ssl (mutual TLS); secured: client.env in the data dir
KAFKA_SECURITY ?= plaintext
export KAFKA_PORT EMULATOR_PORT KAFKA_SECURITY

.PHONY: setup test test-fast lint kafka-up kafka-down kafka-status emulator demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[asr,analytics,bench,dev,fast]'
	touch $@

.cache/setup.done: $(VENV)/.installed infra/install-espeak.sh infra/install-chromium.sh infra/kafka/pom.xml
	bash infra/install-espeak.sh
	bash infra/install-chromium.sh
	bash infra/kafka/kafka.sh fetch
	mkdir -p .cache && touch $@

## setup: virtualenv, Python deps (locked: constraints.txt), espeak-ng, chromium (+ driver), Kafka jars (Maven)
setup: .cache/setup.done

## test: the whole suite (starts its own Kafka broker and STT emulators)
test: setup lint
	$(BIN)/pytest -q

## test-fast: unit tests only (no broker, no sockets)
test-fast: setup
	$(BIN)/pytest -q tests/unit

lint: $(VENV)/.installed
	$(BIN)/ruff check pipeline tests bench infra
	$(BIN)/mypy --strict pipeline

## kafka-up / kafka-down: a local single-node KRaft broker on 127.0.0.1:$(KAFKA_PORT) (data in .cache/kafka-data/<port>);
## KAFKA_SECURITY=sasl_ssl|ssl: a secured broker, its client settings in .cache/kafka-data/$(KAFKA_PORT)/client.env
kafka-up: setup
	bash infra/kafka/kafka.sh up

kafka-down:
	bash infra/kafka/kafka.sh down

kafka-status:
	bash infra/kafka/kafka.sh status

## emulator: the Cartesia-compatible STT emulator on 127.0.0.1:$(EMULATOR_PORT) (ENGINE=tones|whisper)
ENGINE ?= tones
emulator: setup
	$(BIN)/stt-pipeline emulator --port $(EMULATOR_PORT) --engine $(ENGINE)

## demo: Kafka + STT emulator (whisper engine) + worker; three real-speech sessions streamed live
demo: setup
	bash infra/demo.sh

## bench: worker benchmark (figures as ratios against a baseline measured in the same run)
bench: setup
	$(BIN)/python -m bench.compare --climb --c-floor

clean:
	-bash infra/kafka/kafka.sh down
	rm -rf .cache/kafka-data
