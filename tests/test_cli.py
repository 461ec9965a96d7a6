"""The command line end to end, as a user runs it: `stepbatch gen → replay → report` in subprocesses
against the session's database server (a fresh database per test), and what bad input does to it."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pyarrow.parquet as pq
import pymongo
import pytest

from stepbatch.tools import gen

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Every attack kind shows up a few dozen times in this much traffic.
GEN_ARGS = ["--walkers", "40", "--proofs", "1500", "--seed", "5", "--attack-share", "0.3"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stepbatch(*args, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """`python -m stepbatch ARGS` with `env` on top of a copy of this process's environment."""
    return subprocess.run([sys.executable, "-m", "stepbatch", *map(str, args)], cwd=cwd or ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=300)


def no_database_env(tmp_path) -> dict:
    """No MONGODB_URI and an embedded-server data dir that must stay absent if no database is used."""
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    env["STEPBATCH_DATA_DIR"] = str(tmp_path / "must-not-exist")
    return env


def run_isolated(*args, tmp_path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "stepbatch", *map(str, args)], cwd=ROOT,
                            env=no_database_env(tmp_path), capture_output=True, text=True,
                            timeout=300)
    assert not (tmp_path / "must-not-exist").exists(), "a database server was started"
    return result


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The same generated traffic as Parquet and as NDJSON, each with its triangles sidecar."""
    folder = tmp_path_factory.mktemp("traffic")
    paths = {}
    for fmt in ("parquet", "ndjson"):
        path = folder / f"traffic.{fmt}"
        result = stepbatch("gen", *GEN_ARGS, "--out", path)
        assert result.returncode == 0, result.stderr
        paths[fmt] = path
    return paths


def sidecar(path: pathlib.Path) -> pathlib.Path:
    return path.with_suffix(".triangles.json")


def assert_one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"stepbatch {command}: ")
    return lines[0]


# ------------------------------------------------------------------------------ the journey

@pytest.mark.mongo
@pytest.mark.parametrize("fmt", ["parquet", "ndjson"])
def test_gen_replay_report_commits_every_batch_and_every_verdict_is_the_expected_one(
        traffic, fmt, tmp_path, mongo_uri, mongo_db_name):
    env = {"MONGODB_URI": mongo_uri, "STEPBATCH_DB": mongo_db_name}
    verdicts_path = tmp_path / "verdicts.parquet"
    replayed = stepbatch("replay", traffic[fmt], "--triangles", sidecar(traffic[fmt]),
                         "--batch-size", 500, "--out", verdicts_path, "--quiet", env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1,500 proofs in 3 batches" in replayed.stdout
    assert "committed to the database" in replayed.stdout

    verdicts = pq.read_table(verdicts_path).to_pydict()
    assert verdicts["row"] == list(range(1500))
    assert set(verdicts["attack"]) >= set(gen.ATTACK_CODES)
    wrong = [(row, expected, code) for row, expected, code
             in zip(verdicts["row"], verdicts["expected_code"], verdicts["code"]) if expected != code]
    assert wrong == []

    with pymongo.MongoClient(mongo_uri) as client:
        db = client[mongo_db_name]
        assert db.batches.count_documents({}) == 3
        accepted = verdicts["code"].count("ACCEPTED")
        assert db.nonces.count_documents({}) == accepted

    report = stepbatch("report", verdicts_path, "--fail-on-mismatch")
    assert report.returncode == 0, report.stderr
    assert "0 verdicts differ from their expected code" in report.stdout


def test_replay_without_commit_needs_no_database_and_both_formats_get_the_same_verdicts(
        traffic, tmp_path):
    codes = {}
    for fmt in ("parquet", "ndjson"):
        out = tmp_path / f"{fmt}.verdicts.parquet"
        result = run_isolated("replay", traffic[fmt], "--no-commit", "--triangles",
                              sidecar(traffic[fmt]), "--batch-size", 400, "--out", out,
                              tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "state kept in memory only" in result.stdout
        table = pq.read_table(out)
        assert table.column("code").to_pylist() == table.column("expected_code").to_pylist()
        # Messages differ by design: NDJSON names lines, Parquet rows, and only JSON can carry a
        # value of the wrong type.
        codes[fmt] = table.select(["row", "account", "nonce", "triangle_id", "code",
                                   "reward_micro", "click_number", "speed_mps"])
    assert codes["parquet"].equals(codes["ndjson"])


def test_report_plot_writes_a_png_and_fail_on_mismatch_exits_1_when_a_verdict_differs(
        traffic, tmp_path):
    out = tmp_path / "verdicts.parquet"
    assert run_isolated("replay", traffic["parquet"], "--no-commit", "--triangles",
                        sidecar(traffic["parquet"]), "--out", out, "--quiet",
                        tmp_path=tmp_path).returncode == 0
    plot = tmp_path / "report.png"
    report = stepbatch("report", out, "--plot", plot)
    assert report.returncode == 0, report.stderr
    assert plot.read_bytes().startswith(PNG_MAGIC)
    assert f"plot: {plot}" in report.stdout

    table = pq.read_table(out)
    expected = table.column("expected_code").to_pylist()
    expected[7] = "NONCE_REPLAY" if expected[7] != "NONCE_REPLAY" else "ACCEPTED"
    tampered = tmp_path / "tampered.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("expected_code"),
                                    "expected_code", [expected]), tampered)
    report = stepbatch("report", tampered, "--fail-on-mismatch")
    assert report.returncode == 1
    assert "1 verdicts differ from their expected code" in report.stdout


# ------------------------------------------------------------------------------ bad input

def _unreadable_inputs(traffic, folder: pathlib.Path) -> dict[str, pathlib.Path]:
    data = traffic["parquet"].read_bytes()
    truncated = folder / "truncated.parquet"
    truncated.write_bytes(data[:len(data) // 2])
    corrupt = folder / "corrupt.parquet"
    corrupt.write_bytes(data[:4] + bytes(range(256)) * 40 + data[-8:])
    unknown = folder / "notes.txt"
    unknown.write_text("these are not proofs\n")
    return {"missing": folder / "missing.parquet", "truncated": truncated, "corrupt": corrupt,
            "unknown format": unknown}


@pytest.mark.parametrize("case", ["missing", "truncated", "corrupt", "unknown format"])
def test_an_unreadable_input_exits_2_with_one_line_on_stderr(traffic, tmp_path, case):
    path = _unreadable_inputs(traffic, tmp_path)[case]
    out = tmp_path / "verdicts.parquet"
    result = run_isolated("replay", path, "--no-commit", "--triangles", sidecar(traffic["parquet"]),
                          "--out", out, tmp_path=tmp_path)
    line = assert_one_line_error(result, "replay")
    assert path.name in line
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing", "truncated", "corrupt", "unknown format"])
def test_report_on_an_unreadable_verdict_file_exits_2_with_one_line_on_stderr(traffic, tmp_path,
                                                                               case):
    path = _unreadable_inputs(traffic, tmp_path)[case]
    line = assert_one_line_error(stepbatch("report", path), "report")
    assert path.name in line


def test_report_on_a_proof_file_says_it_is_not_a_verdict_file(traffic):
    line = assert_one_line_error(stepbatch("report", traffic["parquet"]), "report")
    assert "not a verdict file" in line


def test_bad_ndjson_lines_become_invalid_payload_verdicts_naming_their_line(traffic, tmp_path):
    lines = traffic["ndjson"].read_bytes().decode().split("\n")
    not_json, wrong_types = 10, 20  # 1-based line numbers
    lines[not_json - 1] = lines[not_json - 1][:40]
    record = json.loads(lines[wrong_types - 1])
    record.update(lat="north", accuracy=True)
    lines[wrong_types - 1] = json.dumps(record)
    damaged = tmp_path / "damaged.ndjson"
    damaged.write_text("\n".join(lines))

    out = tmp_path / "verdicts.parquet"
    result = run_isolated("replay", damaged, "--no-commit", "--triangles",
                          sidecar(traffic["ndjson"]), "--out", out, "--quiet", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    verdicts = pq.read_table(out).to_pydict()
    assert len(verdicts["row"]) == 1500
    for line in (not_json, wrong_types):
        assert verdicts["code"][line - 1] == "INVALID_PAYLOAD"
        assert verdicts["message"][line - 1].startswith(f"line {line}: ")
    assert "not valid JSON" in verdicts["message"][not_json - 1]
    assert "lat" in verdicts["message"][wrong_types - 1]
    assert verdicts["code"].count("INVALID_PAYLOAD") == verdicts["expected_code"].count(
        "INVALID_PAYLOAD") + 2 - [verdicts["expected_code"][n - 1] for n in (not_json, wrong_types)
                                  ].count("INVALID_PAYLOAD")


def test_bad_arguments_exit_2_with_one_line_on_stderr(tmp_path, traffic):
    result = run_isolated("replay", traffic["parquet"], "--no-commit", "--triangles",
                          sidecar(traffic["parquet"]), "--batch-size", 0, tmp_path=tmp_path)
    assert "--batch-size" in assert_one_line_error(result, "replay")
    broken = tmp_path / "broken.triangles.json"
    broken.write_text("{not json")
    result = run_isolated("replay", traffic["parquet"], "--no-commit", "--triangles", broken,
                          tmp_path=tmp_path)
    assert "--triangles" in assert_one_line_error(result, "replay")


# ------------------------------------------------------------------------------ --help

def _command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command the parser knows, e.g. ("mesh", "seed")."""
    import argparse

    from stepbatch.cli import build_parser

    def walk(parser, prefix):
        found = [prefix]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += walk(sub, (*prefix, name))
        return found

    return walk(build_parser(), ())


@pytest.mark.parametrize("command", _command_paths(), ids=lambda path: " ".join(path) or "stepbatch")
def test_every_command_help_exits_0(command, tmp_path):
    result = run_isolated(*command, "--help", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: stepbatch")
    assert result.stderr == ""
