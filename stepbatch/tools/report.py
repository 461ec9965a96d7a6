"""`stepbatch report`: a Polars summary of a verdict file, and the detection matrix of generated traffic."""

from __future__ import annotations

import dataclasses

import h3
import polars as pl

from stepbatch import mesh
from stepbatch.protocol import CODE_NAMES


@dataclasses.dataclass
class Report:
    rows: int
    counts: pl.DataFrame  # code, proofs, share
    acceptance_rate: float
    rewards_micro: int
    top_accounts: pl.DataFrame
    top_triangles: pl.DataFrame
    h3_activity: pl.DataFrame
    detection: pl.DataFrame | None  # expected_code × code
    mismatches: pl.DataFrame | None
    throughput: pl.DataFrame | None  # per batch: rows, seconds, proofs_per_s


def build_report(verdicts: pl.DataFrame, top: int = 10, h3_resolution: int = 7) -> Report:
    rows = verdicts.height
    accepted = verdicts.filter(pl.col("code") == "ACCEPTED")
    check_order = {name: i for i, name in enumerate(CODE_NAMES)}
    counts = (verdicts.group_by("code").agg(pl.len().alias("proofs"))
              .with_columns((pl.col("proofs") / max(rows, 1)).alias("share"))
              .sort(pl.col("code").replace_strict(check_order, default=len(check_order))))
    top_accounts = (accepted.group_by(pl.col("account").str.to_lowercase())
                    .agg(pl.len().alias("accepted"), pl.col("reward_micro").sum())
                    .sort(["accepted", "account"], descending=[True, False]).head(top))
    top_triangles = (accepted.group_by("triangle_id")
                     .agg(pl.len().alias("clicks"), pl.col("reward_micro").sum())
                     .sort(["clicks", "triangle_id"], descending=[True, False]).head(top))

    triangles = accepted.select(pl.col("triangle_id").unique()).to_series().to_list()
    cells = {t: _h3_cell(t, h3_resolution) for t in triangles}
    h3_activity = (accepted.with_columns(pl.col("triangle_id").replace_strict(cells).alias("h3"))
                   .group_by("h3").agg(pl.len().alias("accepted"),
                                       pl.col("account").n_unique().alias("accounts"))
                   .sort(["accepted", "h3"], descending=[True, False]).head(top))

    detection = mismatches = None
    if "expected_code" in verdicts.columns and verdicts["expected_code"].null_count() < rows:
        labelled = verdicts.filter(pl.col("expected_code").is_not_null())
        detection = (labelled.pivot(on="code", index="expected_code", values="index",
                                    aggregate_function="len", sort_columns=True)
                     .fill_null(0).sort("expected_code"))
        mismatches = labelled.filter(pl.col("code") != pl.col("expected_code")).select(
            [c for c in ("row", "index", "expected_code", "code", "attack", "message")
             if c in labelled.columns])

    throughput = None
    if "batch_seconds" in verdicts.columns:
        throughput = (verdicts.filter(pl.col("batch_seconds").is_not_null())
                      .group_by("batch_id", maintain_order=True)
                      .agg(pl.len().alias("rows"), pl.col("batch_seconds").first().alias("seconds"),
                           pl.col("row").min().alias("first_row"))
                      .sort("first_row")
                      .with_columns((pl.col("rows") / pl.col("seconds")).alias("proofs_per_s")))
    return Report(rows=rows, counts=counts, acceptance_rate=accepted.height / max(rows, 1),
                  rewards_micro=int(accepted["reward_micro"].sum() or 0), top_accounts=top_accounts,
                  top_triangles=top_triangles, h3_activity=h3_activity, detection=detection,
                  mismatches=mismatches, throughput=throughput)


def _h3_cell(triangle_id: str, resolution: int) -> str:
    lon, lat = mesh.centroid(triangle_id)["coordinates"]
    return h3.latlng_to_cell(lat, lon, resolution)


def format_report(report: Report, max_mismatches: int = 50) -> str:
    with pl.Config(tbl_rows=100, tbl_cols=20, fmt_str_lengths=60, tbl_width_chars=400,
                   tbl_hide_dataframe_shape=True):
        parts = [
            f"{report.rows:,} verdicts, {report.acceptance_rate:.1%} accepted, "
            f"{report.rewards_micro / 1e6:,.6f} STEP paid",
            "", "verdicts by code", str(report.counts),
            "", "busiest accounts (accepted proofs)", str(report.top_accounts),
            "", "busiest triangles (clicks)", str(report.top_triangles),
            "", "activity per h3 cell (triangle centroids)", str(report.h3_activity),
        ]
        if report.throughput is not None and report.throughput.height:
            rates = report.throughput["proofs_per_s"]
            parts += ["", f"throughput: {rates.median():,.0f} proofs/s median over "
                          f"{report.throughput.height} batches (min {rates.min():,.0f}, "
                          f"max {rates.max():,.0f})"]
        if report.detection is not None:
            wrong = report.mismatches.height
            parts += ["", "detection matrix (rows: expected code, columns: verdict)",
                      str(report.detection),
                      f"{wrong:,} verdicts differ from their expected code"]
            if wrong:
                parts.append(str(report.mismatches.head(max_mismatches)))
    return "\n".join(parts)


def plot_report(report: Report, path: str) -> None:
    """Throughput per batch and the code breakdown, side by side, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    if report.throughput is not None and report.throughput.height:
        left.plot(report.throughput["first_row"].to_list(),
                  report.throughput["proofs_per_s"].to_list(), marker=".")
        left.set_xlabel("first row of batch")
        left.set_ylabel("proofs / s")
        left.set_title("throughput per batch")
    else:
        left.text(0.5, 0.5, "no timings in this verdict file", ha="center", va="center")
        left.set_axis_off()
    right.barh(report.counts["code"].to_list(), report.counts["proofs"].to_list())
    right.invert_yaxis()
    right.set_xscale("log")
    right.set_xlabel("proofs (log scale)")
    right.set_title("verdicts by code")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
