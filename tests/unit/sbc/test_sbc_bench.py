"""The SBC bench's own logic: its ladders as given on the command line, SIPp's statistics, the summary."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from centralita.cli import build_parser
from centralita.sbc.bench import Bench as SbcBench
from centralita.sbc.bench import BenchSummary, StepResult, parse_rates

PDD_DIRECT = [0.0] * 99 + [1.0]
PDD_SBC = [0.0] * 98 + [3.0, 4.0]


def test_a_ladder_is_read_in_the_order_given_and_an_empty_one_is_no_ladder() -> None:
    assert parse_rates("600, 700,800,") == [600, 700, 800]
    assert parse_rates("") == []


@pytest.mark.parametrize(("text", "says"), [("600,fast", "'fast'"), ("0", "above 0"), ("-100", "above 0")])
def test_a_rate_that_is_not_a_positive_whole_number_is_refused_with_its_value(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_rates(text)


def test_the_direct_ladder_is_not_run_unless_asked_for() -> None:
    parser = build_parser()
    plain = parser.parse_args(["bench", "sbc"])
    asked = parser.parse_args(["bench", "sbc", "--direct-rates", "800,1000"])
    assert parse_rates(plain.direct_rates) == []
    assert parse_rates(asked.direct_rates) == [800, 1000]


def test_a_bad_ladder_on_the_command_line_stops_the_bench_before_it_touches_the_lab(capsys) -> None:
    args = build_parser().parse_args(["bench", "sbc", "--direct-rates", "800,x"])
    assert args.func(args) == 2
    assert "'x'" in capsys.readouterr().err


def test_sipps_last_statistics_line_is_read_by_column_name(tmp_path: Path) -> None:
    (tmp_path / "stat.csv").write_text(
        "StartTime;SuccessfulCall(C);FailedCall(C);\n2026-11-23 11:00:00;10;0;\n2026-11-23 11:01:00;59998;2;\n"
    )
    proc = subprocess.Popen(["true"])
    proc.wait()
    proc.workdir = tmp_path  # type: ignore[attr-defined]
    assert SbcBench.stats(proc) == {
        "StartTime": "2026-11-23 11:01:00",
        "SuccessfulCall(C)": "59998",
        "FailedCall(C)": "2",
    }


def test_a_rate_counts_as_sustained_only_with_every_call_and_every_cdr() -> None:
    assert StepResult(700, 42000, 42000, 0, 42000).sustained
    assert StepResult(1000, 60000, 60000, 0, None).sustained  # a ladder that writes no CDRs
    assert not StepResult(700, 42000, 41999, 1, 41999).sustained
    assert not StepResult(700, 42000, 42000, 0, 41000).sustained


def test_the_summary_shows_the_direct_ceiling_beside_the_sbc_when_it_was_measured() -> None:
    rows = dict(BenchSummary(60, 700, 800, 1000, PDD_DIRECT, PDD_SBC).rows())
    assert rows["highest rate sustained 60 s, full SBC (no failed call, no missing CDR)"] == "700 cps"
    assert rows["highest rate sustained 60 s, minimal stateless Kamailio"] == "800 cps"
    assert rows["highest rate sustained 60 s, SIPp to SIPp with no Kamailio (the host's ceiling)"] == "1000 cps"
    assert rows["full / minimal"] == "0.88"
    assert rows["full / direct"] == "0.70"
    assert rows["PDD added by the SBC, p99"] == "3.00 ms"


def test_the_summary_says_when_a_rate_is_only_a_bound_of_what_the_ladder_tried() -> None:
    tried = {"full": [600, 700, 800], "minimal": [800, 900], "direct": [800, 1000, 2000]}
    rows = dict(BenchSummary(60, 700, 0, 2000, PDD_DIRECT, PDD_SBC, tried).rows())
    assert rows["highest rate sustained 60 s, full SBC (no failed call, no missing CDR)"] == "700 cps"
    assert rows["highest rate sustained 60 s, minimal stateless Kamailio"] == "below 800 cps"
    assert rows["highest rate sustained 60 s, SIPp to SIPp with no Kamailio (the host's ceiling)"] == (
        "2000 cps (the highest rate tried)"
    )
    assert "full / minimal" not in rows


def test_the_summary_leaves_out_the_ladders_that_were_not_run() -> None:
    rows = dict(BenchSummary(60, 700, None, None, PDD_DIRECT, PDD_SBC).rows())
    assert not [measure for measure in rows if "minimal" in measure or "no Kamailio" in measure]
    assert "full / direct" not in rows


def test_the_targets_are_met_only_by_1000_calls_a_second_near_the_minimal_rate_with_little_added_pdd() -> None:
    assert BenchSummary(60, 1000, 1200, None, PDD_DIRECT, PDD_SBC).targets_met()
    assert not BenchSummary(60, 900, 1000, 1500, PDD_DIRECT, PDD_SBC).targets_met()
    assert not BenchSummary(60, 1000, 1500, None, PDD_DIRECT, PDD_SBC).targets_met()
    assert not BenchSummary(60, 1000, 1000, None, PDD_DIRECT, [0.0] * 98 + [9.0, 9.0]).targets_met()
