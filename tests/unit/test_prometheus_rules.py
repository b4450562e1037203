"""The alert rules (prometheus/alerts.yml) under `promtool test rules`, and their contracts.

Data: prometheus/alerts.yml, its test cases prometheus/alerts_test.yml, the Prometheus config
scripts/stack.sh writes, the compose config, the exporter's query file, and the metric
names producer_app and consumer_app register. promtool comes with Debian's `prometheus`
package (`make install`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client import generate_latest

from consumer_app.metrics import ConsumerMetrics
from producer_app.metrics import ProducerMetrics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "prometheus"

# Each alert the issue asks for (issue 14, "Alerts an operator would set"), plus the ones
# for a warehouse that is down and the consumer's dead letters (issue 12).
EXPECTED_ALERTS = {
    "FeedSilent",
    "ConsumerDown",
    "ConsumerLagging",
    "EventToCommitLatencyHigh",
    "DeadLettersArriving",
    "ConsumerDeadLetters",
    "UnfilledGaps",
    "CandleReconciliationFailed",
    "ProducerDown",
    "WarehouseDown",
}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: install Debian's prometheus with `make install`")
    return found


def _run(
    argv: list[str], cwd: Path | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv: promtool or our own script
        argv, cwd=cwd, capture_output=True, text=True, timeout=120, **kwargs
    )


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules_and_every_case_passes() -> None:
    promtool = _promtool()
    check = _run([promtool, "check", "rules", str(PROM / "alerts.yml")])
    assert check.returncode == 0, check.stdout + check.stderr
    tested = _run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROM)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    names = {rule["alert"] for rule in _rules()}
    assert names == EXPECTED_ALERTS
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == names, f"never seen firing: {names - fired}"
    assert quiet == names, f"never seen quiet: {names - quiet}"


def _registered_names() -> set[str]:
    text = generate_latest(ProducerMetrics().registry) + generate_latest(ConsumerMetrics().registry)
    names = set()
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "counter":
                names.add(name + "_total")
            if kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def test_every_app_metric_a_rule_or_the_dashboard_reads_is_registered_by_the_app() -> None:
    from dashboard.health import QUERIES

    registered = _registered_names()
    texts = [rule["expr"] for rule in _rules()] + list(QUERIES.values())
    used = {m for text in texts for m in re.findall(r"\b((?:producer|consumer)_\w+)", text)}
    assert used, "no app metric found in the rules"
    assert used <= registered, f"not registered by producer_app/consumer_app: {used - registered}"


def test_warehouse_metrics_the_rules_read_come_from_the_exporter_queries() -> None:
    queries = yaml.safe_load((PROM / "postgres-exporter-queries.yml").read_text())
    provided = set()
    for prefix, spec in queries.items():
        labels = set()
        for metric in spec["metrics"]:
            ((column, options),) = metric.items()
            if options["usage"] == "LABEL":
                labels.add(column)
            else:
                provided.add(f"{prefix}_{column}")
        assert "symbol" in labels, f"{prefix}: alerts name the symbol"
    used = {m for rule in _rules() for m in re.findall(r"\b(pipeline_\w+)", rule["expr"])}
    assert used and used <= provided, f"no exporter query provides {used - provided}"


def test_the_stack_writes_a_config_promtool_accepts_with_every_job_the_rules_name(
    tmp_path: Path,
) -> None:
    promtool = _promtool()
    # a scratch copy of the stack's files, so the real .local/ is left alone
    for part in ("scripts", "prometheus"):
        shutil.copytree(ROOT / part, tmp_path / part)
    (tmp_path / ".env").write_text(
        "POSTGRES_PASSWORD=x\nPRODUCER_METRICS_PORT=19108\nCONSUMER_METRICS_PORT=19109\n"
        "POSTGRES_EXPORTER_PORT=19187\nREDIS_EXPORTER_PORT=19121\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    written = _run(["bash", "scripts/stack.sh", "prometheus-config"], cwd=tmp_path, env=env)
    assert written.returncode == 0, written.stderr
    config_path = Path(written.stdout.strip().splitlines()[-1])
    check = _run([promtool, "check", "config", str(config_path)])
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load(config_path.read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets == {
        "producer": ["127.0.0.1:19108"],
        "consumer": ["127.0.0.1:19109"],
        "postgres": ["127.0.0.1:19187"],
        "redis": ["127.0.0.1:19121"],
    }
    jobs_in_rules = {j for rule in _rules() for j in re.findall(r'job="(\w+)"', rule["expr"])}
    assert jobs_in_rules <= set(targets)
