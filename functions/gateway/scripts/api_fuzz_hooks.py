"""schemathesis hooks of api-fuzz.sh: the rules of the telemetry query that span parameters or
depend on the data, which an OpenAPI schema cannot state. Every other rule is in the schema,
exactly as strict as the gateway's parsers, so with these rules applied to the generated
schema-valid requests, every one of them must be accepted (positive_data_acceptance).

- start_time must not be after end_time (400 invalid-parameter otherwise);
- an aggregation may have at most API_FUZZ_MAX_POINTS buckets per metric over the window clipped
  to the data (400 too-many-points otherwise). The data's span over every GPU,
  [API_FUZZ_DATA_FIRST_US, API_FUZZ_DATA_LAST_US], is at least each GPU's, so a request kept here
  has at most as many buckets as the gateway counts.

Schema-invalid requests (negative_data_rejection) are left alone.
"""

import os
import re

import schemathesis

FIRST_US = int(os.environ["API_FUZZ_DATA_FIRST_US"])
LAST_US = int(os.environ["API_FUZZ_DATA_LAST_US"])
MAX_POINTS = int(os.environ.get("API_FUZZ_MAX_POINTS", "11000"))

# 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z: the gateway clamps an offset's overflow.
RFC3339_MIN_US = -62_167_219_200_000_000
RFC3339_MAX_US = 253_402_300_799_999_999
STEP_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+ -])(\d{2}):(\d{2}))"
)


def days_from_civil(year, month, day):
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, year 0 included)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def micros(text):
    """A time bound as the gateway reads it, in microseconds."""
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        whole, _, fraction = text.partition(".")
        value = abs(int(whole)) * 1_000_000 + int((fraction + "000000")[:6])
        return -value if whole.startswith("-") else value
    m = RFC3339.fullmatch(text)
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction = int(((m.group(7) or ".")[1:] + "000000")[:6])
    offset = 0
    if m.group(8) not in ("Z", "z"):
        sign = -1 if m.group(9) == "-" else 1
        offset = sign * (int(m.group(10)) * 3600 + int(m.group(11)) * 60)
    seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset
    return min(max(seconds * 1_000_000 + fraction, RFC3339_MIN_US), RFC3339_MAX_US)


def step_us(text):
    number, unit = re.fullmatch(r"(\d+)([a-z]+)", text).groups()
    return int(number) * STEP_UNITS_US[unit]


@schemathesis.hook
def filter_case(context, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return True
    if not case.operation.path.endswith("/telemetry"):
        return True
    query = case.query or {}
    start = micros(query["start_time"]) if "start_time" in query else None
    end = micros(query["end_time"]) if "end_time" in query else None
    if start is not None and end is not None and start > end:
        return False
    if "step" in query:
        low = max(start if start is not None else FIRST_US, FIRST_US)
        high = min(end if end is not None else LAST_US, LAST_US)
        step = step_us(query["step"])
        if low <= high and high // step - low // step + 1 > MAX_POINTS:
            return False
    return True
