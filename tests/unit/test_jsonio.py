import json
import re
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from nvrd.api.jsonio import dumps, rfc3339
from nvrd.jobs import JobState

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]),
    )
)
def test_rfc3339_is_utc_with_milliseconds(moment: datetime) -> None:
    text = rfc3339(moment)
    assert RFC3339_MS.match(text)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert abs(parsed - moment) < timedelta(milliseconds=1)


def test_dumps_handles_times_and_enums() -> None:
    data = json.loads(dumps({"t": datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC), "s": JobState.RUNNING}))
    assert data == {"t": "2026-01-02T03:04:05.678Z", "s": "running"}
