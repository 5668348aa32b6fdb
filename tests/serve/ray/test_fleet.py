"""What the front's ``/health`` says of the deployment, and its ``/metrics``
merged from every replica's."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hibachi.serve._ray._fleet import FleetHealth, ServeView
from hibachi.serve._ray._merge import merge_metrics

OK = {"status": "ok"}
FAILED = {"status": "unavailable"}


@pytest.mark.parametrize(
    ("serve", "answers", "unanswered", "healthy", "status"),
    [
        pytest.param("HEALTHY", {"a": OK, "b": OK}, 0, 2, "ok", id="all-serve"),
        pytest.param("HEALTHY", {"a": OK}, 1, 1, "degraded", id="one-lost-unseen-by-serve"),
        pytest.param("UNHEALTHY", {"a": OK}, 0, 1, "degraded", id="one-being-replaced"),
        pytest.param("HEALTHY", {"a": OK, "b": FAILED}, 0, 1, "degraded", id="one-batcher-failed"),
        pytest.param("UNHEALTHY", {"a": FAILED}, 0, 0, "unavailable", id="none-serves"),
        pytest.param("UNHEALTHY", {}, 1, 0, "degraded", id="no-answer-serve-runs-some"),
    ],
)
def test_the_deployments_status(
    serve: str, answers: dict[str, object], unanswered: int, healthy: int, status: str
) -> None:
    running = 1 if serve == "UNHEALTHY" else 2
    view = ServeView(serve, {"RUNNING": running})
    health = FleetHealth(view, answers, unanswered, healthy)
    assert health.status == status
    assert health.body()["deployment"] == {
        "status": serve,
        "replicas": {"RUNNING": running},
        "message": "",
    }


def test_nothing_running_is_unavailable() -> None:
    assert FleetHealth(ServeView("UNHEALTHY", {"STARTING": 2})).status == "unavailable"


def replica_metrics(finished: int) -> str:
    registry = CollectorRegistry()
    ended = Counter("hibachi_requests_ended", "Ended.", ["model", "reason"], registry=registry)
    ended.labels("m", "stop").inc(finished)
    Histogram("hibachi_e2e", "Latency.", ["model"], registry=registry).labels("m").observe(0.3)
    return generate_latest(registry).decode()


def test_merged_metrics_label_each_sample_with_its_replica() -> None:
    text = merge_metrics({"a": replica_metrics(2), "b": replica_metrics(5)}).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert (
        samples[
            ("hibachi_requests_ended_total", (("model", "m"), ("reason", "stop"), ("replica", "a")))
        ]
        == 2
    )
    assert (
        samples[
            ("hibachi_requests_ended_total", (("model", "m"), ("reason", "stop"), ("replica", "b")))
        ]
        == 5
    )
    assert samples[("hibachi_e2e_count", (("model", "m"), ("replica", "b")))] == 1
    assert text.count("# TYPE hibachi_e2e histogram") == 1
