"""Every cross-reference in the repository resolves (Markdown links to files and headings,
paths of docs/ files named in code and text), and what the README shows of the code (the
IAM policy, the file states) is what the code says."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from kmdagster.file_state import State
from kmdagster.s3.permissions import iam_policy

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOC_PATH = re.compile(r"\bdocs/[\w./-]+\.(?:md|png)\b")


def tracked(*suffixes: str) -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in names if name.endswith(suffixes)]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower-cased, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_the_readme_stays_a_short_front_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_markdown_links_reach_their_files_and_headings() -> None:
    broken = []
    for page in tracked(".md"):
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # a URL
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            if not destination.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and anchor not in anchors(destination.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_docs_paths_named_anywhere_exist() -> None:
    missing = [
        f"{source.relative_to(ROOT)}: {path}"
        for source in tracked(".md", ".py", ".yaml", ".toml", "Makefile")
        for path in DOC_PATH.findall(source.read_text())
        if not (ROOT / path).exists()
    ]
    assert not missing, "\n".join(missing)


def test_the_setup_guide_policy_is_the_one_kmdagster_policy_prints() -> None:
    readme = (ROOT / "docs" / "setup.md").read_text()
    shown = readme.split("   ```json\n", 1)[1].split("   ```", 1)[0]
    assert json.loads(shown) == iam_policy("my-km-imports")


def test_the_documented_file_states_are_the_words_the_cli_and_ui_use() -> None:
    readme = (ROOT / "docs" / "ui.md").read_text()
    table = readme.split("| state | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \| (.+) \|$", table, re.M)
    words = [state for state, _meaning in documented]
    assert sorted(words) == sorted(state.value for state in State), "each state, once"


def test_helm_values_carry_the_instance_settings_of_deploy_dagster_yaml() -> None:
    """docs/deploy.md says the two files set the same run queue, run monitoring and
    storage scheme; the chart takes them in its own keys."""
    instance = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    values = yaml.safe_load((ROOT / "deploy" / "helm-values.yaml").read_text())
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queue["maxConcurrentRuns"] == instance["run_queue"]["max_concurrent_runs"]
    assert queue["tagConcurrencyLimits"] == instance["run_queue"]["tag_concurrency_limits"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert {
        re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), key): value
        for key, value in monitoring.items()
    } == instance["run_monitoring"]
    for kind in ("sensors", "schedules"):
        pool = values["dagsterDaemon"][kind]
        assert {"use_threads": pool["useThreads"], "num_workers": pool["numWorkers"]} == (
            instance[kind]
        )
    scheme = instance["storage"]["postgres"]["postgres_db"]["scheme"]
    assert values["postgresql"]["postgresqlScheme"] == scheme
    assert values["telemetry"] == instance["telemetry"]
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "kmdagster.definitions"]
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for name in ("deploy/dagster.yaml", "deploy/helm-values.yaml", "deploy/Dockerfile"):
        assert (ROOT / name).exists() and name in docs
