"""Avro schemas (.avsc) for every record that crosses Kafka, one file per record type."""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
