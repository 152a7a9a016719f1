"""The one logging style: ``event key=value ...`` in the text, the same fields as record extras."""

from __future__ import annotations

import logging

import pytest

from marketpipe.logs import log_event

log = logging.getLogger("marketpipe.test_logs")


def test_an_event_carries_its_fields_in_the_text_and_as_extras(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=log.name):
        log_event(log, logging.WARNING, "insert rejected, retrying", table="trades", attempt=2)
    [record] = caplog.records
    assert record.getMessage() == "insert rejected, retrying table=trades attempt=2"
    assert (record.levelno, record.__dict__["table"], record.__dict__["attempt"]) == (
        logging.WARNING,
        "trades",
        2,
    )
    assert record.funcName == "test_an_event_carries_its_fields_in_the_text_and_as_extras"
    assert not record.exc_info


def test_exc_info_adds_the_traceback_and_is_not_a_field(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=log.name):
        try:
            raise ValueError("boom")
        except ValueError:
            log_event(log, logging.ERROR, "stage crashed", exc_info=True, stage="normalise")
    [record] = caplog.records
    assert record.getMessage() == "stage crashed stage=normalise"
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert "exc_info=" not in record.getMessage()


def test_an_event_without_fields_is_just_its_words(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=log.name):
        log_event(log, logging.INFO, "ClickHouse is back")
        log_event(log, logging.DEBUG, "not shown", x=1)
    assert [r.getMessage() for r in caplog.records] == ["ClickHouse is back"]
