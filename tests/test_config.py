"""Configuration: SPEC §4/§5 environment names and defaults, and refusal of values that break a gate."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from stepbatch.config import ENV_NAMES, Config, ConfigError

SPEC_DEFAULTS = {  # SPEC §4's table, by environment variable
    "GPS_MAX_ACCURACY_M": 50,
    "CLOCK_DRIFT_MS": 120000,
    "PROOF_SPEED_LIMIT_MPS": 15,
    "PROOF_MORATORIUM_MS": 10000,
    "SUBDIVIDE_AT_CLICKS": 11,
}


def test_defaults_are_specs():
    config = Config.from_env({})
    by_env = {ENV_NAMES[name]: getattr(config, name) for name in ENV_NAMES}
    assert {name: by_env[name] for name in SPEC_DEFAULTS} == SPEC_DEFAULTS
    assert config.mongodb_uri is None and config.db_name == "step"


@pytest.mark.parametrize("env_name, raw, field, expected", [
    ("GPS_MAX_ACCURACY_M", "12.5", "gps_max_accuracy_m", 12.5),
    ("CLOCK_DRIFT_MS", "0", "clock_drift_ms", 0),
    ("PROOF_SPEED_LIMIT_MPS", " 30 ", "speed_limit_mps", 30.0),
    ("PROOF_MORATORIUM_MS", "2500", "moratorium_ms", 2500),
    ("SUBDIVIDE_AT_CLICKS", "1", "subdivide_at_clicks", 1),
    ("STEPBATCH_SIGNATURE_THREADS", "7", "signature_threads", 7),
    ("STEPBATCH_DB", "other", "db_name", "other"),
    ("MONGODB_URI", "mongodb://h/?replicaSet=rs0", "mongodb_uri", "mongodb://h/?replicaSet=rs0"),
])
def test_each_environment_variable_sets_its_field(env_name, raw, field, expected):
    assert getattr(Config.from_env({env_name: raw}), field) == expected


@pytest.mark.parametrize("env_name, raw", [
    ("PROOF_SPEED_LIMIT_MPS", "nan"),
    ("PROOF_SPEED_LIMIT_MPS", "inf"),
    ("PROOF_SPEED_LIMIT_MPS", "abc"),
    ("PROOF_SPEED_LIMIT_MPS", "0"),
    ("GPS_MAX_ACCURACY_M", "-1"),
    ("SUBDIVIDE_AT_CLICKS", "0"),
    ("SUBDIVIDE_AT_CLICKS", "2.5"),
    ("CLOCK_DRIFT_MS", "-5"),
    ("PROOF_MORATORIUM_MS", "1e400"),
    ("STEPBATCH_SIGNATURE_THREADS", "-1"),
    ("STEPBATCH_COMMIT_WAIT_S", "forever"),
])
def test_a_value_that_would_break_a_gate_is_refused_naming_the_variable(env_name, raw):
    with pytest.raises(ConfigError, match=f"^{env_name}: expected "):
        Config.from_env({env_name: raw})


def test_values_given_in_code_are_checked_too():
    with pytest.raises(ConfigError, match="PROOF_SPEED_LIMIT_MPS"):
        Config(speed_limit_mps=math.nan)
    with pytest.raises(ConfigError, match="SUBDIVIDE_AT_CLICKS"):
        Config(subdivide_at_clicks=0)


def test_overrides_win_over_the_environment():
    assert Config.from_env({"SUBDIVIDE_AT_CLICKS": "5"}, subdivide_at_clicks=3).subdivide_at_clicks == 3


@pytest.mark.parametrize("env_name, raw", [("PROOF_SPEED_LIMIT_MPS", "abc"),
                                           ("STEPBATCH_SIGNATURE_THREADS", "-1")])
def test_the_command_line_exits_2_with_one_line(tmp_path, env_name, raw):
    import os

    source = tmp_path / "empty.ndjson"
    source.write_text("")
    result = subprocess.run([sys.executable, "-m", "stepbatch", "replay", str(source), "--no-commit"],
                            env={**os.environ, env_name: raw}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stepbatch replay: {env_name}: expected ")
