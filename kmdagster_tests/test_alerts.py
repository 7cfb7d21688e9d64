"""Alerts against a real HTTP server on 127.0.0.1: each change once, its clearing, a
webhook that fails then recovers, one that never answers, and a daemon restart between."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import (
    DagsterInstance,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)

from kmdagster.component import KmImports
from kmdagster.config import AlertSettings, KmConfig, parse_config
from kmdagster.defs.factory import build_definitions
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.dead_runs import make_dagster_home
from kmdagster_tests.helpers import ACCOUNTS, make_config
from kmdagster_tests.test_setup import run_cli
from kmdagster_tests.ticks import evaluate_schedule

WEBHOOK_ENV = "KMDAGSTER_TEST_WEBHOOK"
SECRET_PATH = "/services/T000/B000/s3cr3t-token"
TICK = datetime(2026, 12, 1, tzinfo=timezone.utc)


class Webhook:
    """A webhook on 127.0.0.1 that answers each POST with the next of ``answers`` (an HTTP
    status, or ``"hang"`` to answer nothing for ``hang_seconds``), then 200."""

    def __init__(self) -> None:
        self.answers: list[int | str] = []
        self.taken: list[dict[str, Any]] = []  # bodies answered 2xx
        self.tried = 0
        self.hang_seconds = 5.0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (the http.server name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.tried += 1
                answer = hook.answers.pop(0) if hook.answers else 200
                if answer == "hang":
                    time.sleep(hook.hang_seconds)
                    answer = 200
                if answer == 200:
                    hook.taken.append(body)
                self.send_response(int(answer))
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}{SECRET_PATH}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str | None]]:
        return [(body["event"], body["file_key"]) for body in self.taken]


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    hook = Webhook()
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    yield hook
    hook.server.shutdown()


class Daemon:
    """The sensors as the daemon runs them: each evaluation starts from the cursor the last
    one saved (kept across a restart: the daemon stores it in the instance)."""

    def __init__(self, config: KmConfig, instance: DagsterInstance) -> None:
        self.defs = build_definitions(config)
        self.instance = instance
        self.cursors: dict[str, str | None] = {}

    def restarted(self, config: KmConfig, instance: DagsterInstance) -> Daemon:
        again = Daemon(config, instance)
        again.cursors = dict(self.cursors)
        return again

    def tick(self, name: str) -> Any:
        sensor = self.defs.resolve_sensor_def(name)
        with build_sensor_context(
            instance=self.instance, cursor=self.cursors.get(name), resources=self.defs.resources
        ) as context:
            result = sensor(context)
            self.cursors[name] = context.cursor
        if isinstance(result, SensorResult):
            self.cursors[name] = result.cursor or self.cursors[name]
            for request in result.dynamic_partitions_requests or []:
                assert not isinstance(request, DeleteDynamicPartitionsRequest)
                self.instance.add_dynamic_partitions(
                    request.partitions_def_name, request.partition_keys
                )
            for event in result.asset_events:
                self.instance.report_runless_asset_event(event)
        return result

    def files(self) -> Any:
        return self.tick(ACCOUNTS.sensor)

    def alerts(self) -> SkipReason:
        said = self.tick(ACCOUNTS.alert_sensor)
        assert isinstance(said, SkipReason)
        return said

    def run_schedule(self) -> str:
        outcome = evaluate_schedule(self.defs, self.instance, TICK)
        assert isinstance(outcome, RunRequest)
        job = self.defs.resolve_job_def(ACCOUNTS.job)
        job.execute_in_process(
            instance=self.instance, partition_key=outcome.partition_key, raise_on_error=False
        )
        assert outcome.partition_key is not None
        return outcome.partition_key


def with_alerts(s3_server: SeaweedS3, bucket: str, warehouse: Path, **alerts: Any) -> KmConfig:
    # Any wait is over the backlog's threshold: the backlog alert fires at the first tick.
    config = make_config(s3_server, bucket, warehouse, backlog_warn_hours=1e-9)
    settings = AlertSettings(webhook_url_env=WEBHOOK_ENV, timeout_seconds=1, **alerts)
    return config.model_copy(update={"alerts": settings})


def clean_file(lines: int = 7) -> bytes:
    return b"".join(b'{"_p":"p%d","_t":1764547200,"_n":"Signed Up"}\n' % n for n in range(lines))


def rejecting_file() -> bytes:
    """Ten lines, three of them rejected: 30%, over the 5% threshold."""
    return clean_file() + b'not json\n{"_t":1764547200}\n{}\n'


def test_each_change_is_alerted_once_and_cleared(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, webhook: Webhook
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=rejecting_file())
    with instance_for_test() as instance:
        daemon = Daemon(with_alerts(s3_server, bucket, warehouse_path), instance)
        daemon.files()
        daemon.files()  # the same state: nothing new
        assert "delivered 1 alert" in daemon.alerts().skip_message  # type: ignore[operator]
        assert webhook.events() == [("backlog_stale", None)]
        assert daemon.run_schedule() == "accounts.1.json"
        daemon.files()
        daemon.files()
        daemon.alerts()
        assert webhook.events() == [
            ("backlog_stale", None),
            ("backlog_stale_cleared", None),
            ("reject_rate", "accounts.1.json"),
        ]
        daemon.alerts()
        assert webhook.tried == 3  # nothing sent twice
    raised = webhook.taken[2]
    assert raised["source"] == "accounts" and "30.0% of its non-blank lines" in raised["detail"]
    assert raised["text"].startswith("[kmdagster ALERT] accounts: accounts.1.json rejected")
    assert datetime.fromisoformat(raised["at"]).tzinfo is not None


def test_a_quarantined_file_is_alerted_and_cleared_once_removed(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, webhook: Webhook
) -> None:
    # Not the gzip its name says: the first run sets it aside at once.
    s3.put_object(Bucket=bucket, Key="accounts.1.json.gz", Body=b"not gzip at all\n")
    with instance_for_test() as instance:
        daemon = Daemon(with_alerts(s3_server, bucket, warehouse_path), instance)
        daemon.files()
        daemon.run_schedule()
        daemon.files()
        s3.delete_object(Bucket=bucket, Key="accounts.1.json.gz")  # the operator removes it
        daemon.files()
        daemon.alerts()
    assert webhook.events() == [
        ("backlog_stale", None),
        # Set aside, the file no longer holds the backlog up.
        ("backlog_stale_cleared", None),
        ("file_quarantined", "accounts.1.json.gz"),
        ("file_quarantined_cleared", "accounts.1.json.gz"),
    ]
    quarantined = next(b for b in webhook.taken if b["event"] == "file_quarantined")
    assert "not" in quarantined["detail"] and "gzip" in quarantined["detail"]


def test_a_webhook_that_fails_then_recovers_gets_each_alert_once(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, webhook: Webhook
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=km_file(seed=1).data)
    webhook.answers = [500]
    with instance_for_test() as instance:
        daemon = Daemon(with_alerts(s3_server, bucket, warehouse_path), instance)
        daemon.files()
        failed = daemon.alerts().skip_message or ""
        assert "1 wait (the webhook answered HTTP 500)" in failed
        assert webhook.taken == [] and webhook.tried == 1
        assert "delivered 1 alert" in (daemon.alerts().skip_message or "")
        daemon.alerts()
    assert webhook.events() == [("backlog_stale", None)] and webhook.tried == 2


def test_a_webhook_that_never_answers_holds_up_only_its_own_sensor(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, webhook: Webhook
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=km_file(seed=1).data)
    webhook.answers = ["hang"]
    with instance_for_test() as instance:
        daemon = Daemon(with_alerts(s3_server, bucket, warehouse_path), instance)
        daemon.files()
        started = time.monotonic()
        said = daemon.alerts().skip_message or ""
        assert time.monotonic() - started < webhook.hang_seconds  # it gave up at 1 s
        assert "no answer within 1 s" in said and webhook.url not in said
        # Registration and the import go on meanwhile.
        s3.put_object(Bucket=bucket, Key="accounts.2.json", Body=km_file(seed=2).data)
        daemon.files()
        assert "accounts.2.json" in instance.get_dynamic_partitions(ACCOUNTS.partitions)
        assert daemon.run_schedule() == "accounts.1.json"
        daemon.alerts()  # the same alert again, now answered
    assert ("backlog_stale", None) in webhook.events()


def test_a_daemon_restart_between_loses_and_repeats_nothing(
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = make_dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    config = with_alerts(s3_server, bucket, warehouse_path)
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=rejecting_file())
    with DagsterInstance.get() as instance:
        daemon = Daemon(config, instance)
        daemon.files()  # backlog_stale raised, not yet delivered
        daemon.run_schedule()
    with DagsterInstance.get() as instance:  # the daemon restarts
        daemon = daemon.restarted(config, instance)
        daemon.files()  # its health cursor says backlog_stale was raised
        daemon.alerts()
        daemon.files()
        daemon.alerts()
    assert webhook.events() == [
        ("backlog_stale", None),
        ("backlog_stale_cleared", None),
        ("reject_rate", "accounts.1.json"),
    ]


def test_alerts_wait_unsent_while_the_webhook_variable_is_unset(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(WEBHOOK_ENV)
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=km_file(seed=1).data)
    with instance_for_test() as instance:
        daemon = Daemon(with_alerts(s3_server, bucket, warehouse_path, queue_limit=1), instance)
        daemon.files()
        said = daemon.alerts().skip_message or ""
        assert f"${WEBHOOK_ENV} is not set" in said
        monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
        daemon.alerts()
    assert webhook.events() == [("backlog_stale", None)]


def test_a_failed_run_and_a_failed_health_evaluation_are_alerted_and_cleared(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, webhook: Webhook
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=clean_file())
    warehouse_path.write_bytes(b"not a database at all")  # the import and the ledger fail
    config = with_alerts(s3_server, bucket, warehouse_path)
    config = config.model_copy(
        update={"sources": (config.sources[0].model_copy(update={"backlog_warn_hours": 24}),)}
    )
    with instance_for_test() as instance:
        daemon = Daemon(config, instance)
        daemon.files()
        daemon.run_schedule()
        warehouse_path.unlink()  # put right: the next run makes a new warehouse
        daemon.files()
        daemon.run_schedule()
        daemon.files()
        daemon.alerts()
    assert webhook.events() == [
        ("health_error", None),
        ("health_error_cleared", None),
        ("file_failed", "accounts.1.json"),
        ("file_failed_cleared", "accounts.1.json"),
    ]
    error, failed = webhook.taken[0], webhook.taken[2]
    assert "not a database" in error["detail"] or "DuckDB" in error["detail"]
    assert failed["text"].startswith("[kmdagster ALERT] accounts: import of accounts.1.json failed")
    for body in webhook.taken:  # the secret URL is in no alert
        assert SECRET_PATH not in json.dumps(body)


def test_past_the_queue_limit_the_oldest_alerts_are_dropped_and_the_next_says_so(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(WEBHOOK_ENV)  # the webhook is away while three alerts are raised
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=rejecting_file())
    with instance_for_test() as instance:
        config = with_alerts(s3_server, bucket, warehouse_path, queue_limit=1)
        daemon = Daemon(config, instance)
        daemon.files()
        daemon.run_schedule()
        daemon.files()
        monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
        said = daemon.alerts().skip_message or ""
        daemon.alerts()
    assert "delivered 1 alert" in said
    assert webhook.events() == [("reject_rate", "accounts.1.json")]
    assert webhook.taken[0]["dropped_before"] == 2


def test_kmdagster_test_alert_posts_one_alert_and_says_why_not_when_it_cannot(
    tmp_path: Path, webhook: Webhook, capsys: pytest.CaptureFixture[str]
) -> None:
    source = {"name": "accounts", "bucket": "b", "base_filename": "accounts.json"}
    path = tmp_path / "kmdagster.yaml"
    path.write_text(yaml.safe_dump({"sources": [source]}))
    code, _, err = run_cli(capsys, "--config", str(path), "test-alert")
    assert code != 0 and "has no alerts section" in err

    path.write_text(
        yaml.safe_dump({"alerts": {"webhook_url_env": WEBHOOK_ENV}, "sources": [source]})
    )
    code, out, err = run_cli(capsys, "--config", str(path), "test-alert")
    assert code == 0, err
    [body] = webhook.taken
    assert body["event"] == "test_alert" and body["source"] == "accounts"
    assert body["text"] == (
        "[kmdagster ALERT] accounts: a test alert: alerts reach this webhook: "
        "sent by `kmdagster test-alert`"
    )
    assert out.startswith(f"sent: the webhook in ${WEBHOOK_ENV} took a test alert ({body['id']})")

    webhook.answers = [500]
    code, out, err = run_cli(capsys, "--config", str(path), "test-alert")
    assert code != 0 and "not sent" in err and "HTTP 500" in err
    assert SECRET_PATH not in out + err  # the URL is a secret


def test_the_alerts_examples_of_the_reference_load_as_they_are_shown() -> None:
    """The ``alerts:`` blocks docs/reference.md shows for kmdagster.yaml and a Component's
    defs.yaml configure the same alerts, each read as kmdagster reads that file."""
    reference = (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text()
    blocks = [
        yaml.safe_load(block)
        for block in re.findall(r"```yaml\n(.*?)```", reference, re.S)
        if "alerts" in block
    ]
    config_file, defs_yaml = blocks[:2]
    from_file = parse_config(config_file, origin="kmdagster.yaml")
    assert defs_yaml["type"] == f"{KmImports.__module__}.{KmImports.__name__}"
    component = KmImports(**defs_yaml["attributes"])
    from_component = parse_config(
        {"sources": component.sources, "alerts": component.alerts}, origin="defs.yaml"
    )
    assert from_file.alerts is not None and from_file.alerts == from_component.alerts
    assert from_file.alerts.webhook_url_env == "KMDAGSTER_ALERT_WEBHOOK"
    assert from_file.sources == from_component.sources
