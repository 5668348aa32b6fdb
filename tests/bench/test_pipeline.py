"""`hibachi bench --workloads pipeline`: the pipeline workload end to end (figures meaningless)."""

from __future__ import annotations

from hibachi._bench import preset, run_bench
from hibachi._bench.settings import Overrides


def test_the_pipeline_workload_runs_when_asked_for() -> None:
    assert "pipeline" not in preset("full").workloads
    report = run_bench(preset("tiny", workloads=("pipeline",)))
    (section,) = report.sections
    assert [(row.method, row.status) for row in section.rows] == [
        ("AR: composed model", "ok"),
        ("AR: Pipeline (2 groups)", "ok"),
        ("FF: composed model", "ok"),
        ("FF: Pipeline (3 in flight)", "ok"),
    ]
    assert all(len(str(row.values["busy"]).split()) == 2 for row in section.rows[1::2])


def test_stages_that_sleep_or_do_nothing_get_rows_of_their_own() -> None:
    overrides = Overrides(stage_work=("sleep", "noop"))
    report = run_bench(preset("tiny", workloads=("pipeline",), overrides=overrides))
    (section,) = report.sections
    methods = [row.method for row in section.rows if row.status == "ok"]
    assert methods[0] == "sleep: AR: composed model" and methods[4] == "noop: AR: composed model"
    assert len(methods) == 8
    assert "sleep: 2 ms a call; noop" in section.title
