"""`hibachi bench --workloads pipeline`: the pipeline workload end to end (figures meaningless)."""

from __future__ import annotations

from hibachi._bench import preset, run_bench


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
