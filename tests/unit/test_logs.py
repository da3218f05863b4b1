import logging

from nvrd.logs import LineFormatter, LogLevels


def test_line_format_is_utc_and_carries_structured_fields() -> None:
    record = logging.LogRecord("nvrd.jobs", logging.WARNING, __file__, 1, "job %s failed", ("a1",), None)
    record.camera = "cam-3"
    line = LineFormatter().format(record)
    assert line.endswith("WARNING nvrd.jobs: job a1 failed camera=cam-3")
    assert line[23] == "Z"


def test_levels_apply_and_previous_overrides_are_undone() -> None:
    levels = LogLevels()
    levels.set("warning", {"nvrd.test.a": "debug"})
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("nvrd.test.a").level == logging.DEBUG
    levels.set("info", {"nvrd.test.b": "error"})
    assert logging.getLogger("nvrd.test.a").level == logging.NOTSET
    assert logging.getLogger("nvrd.test.b").level == logging.ERROR
    assert logging.getLogger().level == logging.INFO
