"""Series tallied on the event loop reach prometheus_client's values when the app stops, with no
scrape: with several workers, the files a worker leaves behind count its last requests."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from tests.integration.app.apps import app_settings, running_app
from tests.integration.app.test_infer import pixels


def test_requests_served_before_shutdown_are_in_the_series_without_a_scrape(
    seeded_registry: Path,
) -> None:
    with running_app(app_settings(seeded_registry, model="cnn-digits")) as client:
        for label in (1, 2, 3):
            response = client.post("/infer", json={"inputs": {"image": pixels(label)}})
            assert response.status_code == 200, response.text
        metrics = client.app.state.metrics
        # Not yet: the tallies hold them until a scrape or the end.
        before = generate_latest(metrics.registry).decode()
        assert 'http_requests_total{handler="/infer",method="POST",status="2xx"} 0.0' in before
    text = generate_latest(metrics.registry).decode()
    assert 'http_requests_total{handler="/infer",method="POST",status="2xx"} 3.0' in text
    assert 'frameworm_queue_wait_seconds_count{model="cnn-digits"} 3.0' in text
    assert "frameworm_inflight_requests 0.0" in text
