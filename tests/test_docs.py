"""The docs show what the code does: examples run, output is current, every name is covered."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest

import workermatch as wm
from workermatch._cli import main as cli_main
from workermatch.simulation import CANDIDATE_POLICIES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def code_block_after(text: str, marker: str) -> str:
    """The body of the first fenced block after ``marker``."""
    found = re.search(re.escape(marker) + r"\s*```[a-z]*\n(.*?)```", text, re.DOTALL)
    assert found, f"no fenced block after {marker!r}"
    return found.group(1)


def test_the_worked_example_in_how_it_decides_prints_what_the_page_shows() -> None:
    page = (DOCS / "how-it-decides.md").read_text(encoding="utf-8")
    code = code_block_after(page, "<!-- worked-example: code -->")
    expected = code_block_after(page, "<!-- worked-example: output -->")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/how-it-decides.md", "exec"), {"__name__": "worked_example"})
    assert out.getvalue() == expected


def test_the_clones_policy_in_tuning_is_the_measured_rank_newest_candidate() -> None:
    page = (DOCS / "tuning.md").read_text(encoding="utf-8")
    code = textwrap.dedent(code_block_after(page, "<!-- clones-policy -->"))
    scope: dict[str, Any] = {"__name__": "clones_policy"}
    exec(compile(code, "docs/tuning.md", "exec"), scope)
    measured = CANDIDATE_POLICIES["rank-newest"]
    policy = scope["policy"]
    assert attrs.evolve(policy.rules, name=measured.rules.name) == measured.rules
    assert policy.evolve(name=measured.name, rules=measured.rules) == measured


@pytest.mark.parametrize("policy", sorted(wm.POLICIES))
def test_the_rule_tables_in_how_it_decides_are_what_workermatch_rules_prints(policy: str) -> None:
    page = (DOCS / "how-it-decides.md").read_text(encoding="utf-8")
    blocks = re.findall(rf"<!-- rules: {policy} -->\n(.*?)<!-- /rules -->", page, re.DOTALL)
    assert len(blocks) == 1, f"one block <!-- rules: {policy} --> ... <!-- /rules --> expected"
    out = io.StringIO()
    assert cli_main(["rules", "--policy", policy], stdout=out) == 0
    printed = out.getvalue()
    assert wm.POLICIES[policy].rules.to_markdown() in printed
    assert blocks[0].strip() == printed.strip()


def test_the_api_reference_covers_every_public_name() -> None:
    page = (DOCS / "api.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^### `([^`]+)`$", page, re.MULTILINE))
    assert sorted(set(wm.__all__) - headings) == []
    assert sorted(headings - set(wm.__all__)) == []


def test_the_index_links_every_page() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}
    assert sorted(pages - linked) == []


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


LINKED_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", LINKED_FILES, ids=lambda p: p.name)
def test_every_link_names_a_file_and_heading_that_exist(path: Path) -> None:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an external address
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        missing = not linked.exists()
        if missing or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == []


GONE = [
    "spec/",
    "semantics.md",
    "shared/",
    "real-system.md",
    "concepts.md",
    "rules.md",
    "decisions.md",
    "policies.md",
    "accuracy.md",
    "sql.md",
    "conformance.md",
    "cli.md",
    "trace-format.md",
]


@pytest.mark.parametrize("path", LINKED_FILES, ids=lambda p: p.name)
def test_no_page_names_a_file_the_repository_does_not_hold(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    named = [g for g in GONE if re.search(rf"(?<![\w-]){re.escape(g)}", text)]
    assert named == []


def test_tuning_lists_every_strict_expected_failure_of_the_guarantees() -> None:
    tests = (ROOT / "tests" / "guarantees" / "test_guarantees.py").read_text(encoding="utf-8")
    xfails = re.findall(r"@pytest\.mark\.xfail\(.*?\)\ndef (test_\w+)", tests, re.DOTALL)
    assert xfails
    page = (DOCS / "tuning.md").read_text(encoding="utf-8")
    limits = page.split("## Known limits", 1)[1]
    assert sorted(name for name in xfails if name not in limits) == []
    figures = page.split("## Accuracy figures", 1)[1].split("\n## ", 1)[0]
    assert "workermatch simulate --seed 0 --fleets 10 --markdown" in figures
    scenarios = {row.split("|")[1].strip() for row in figures.splitlines() if row.startswith("| ")}
    from workermatch.simulation import SCENARIOS

    assert set(SCENARIOS) <= scenarios


# ---------------------------------------------------------------------------------------------
# examples/endpoint.py


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("endpoint_example", ROOT / "examples/endpoint.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_runnable_endpoint_example_plays_the_story_to_one_worker() -> None:
    replies = load_example().demo()
    ok = [reply for _, status, reply in replies if status == 200]
    assert {reply["workerId"] for reply in ok} == {"w1"}
    assert [reply["rule"] for reply in ok[:3]] == ["created", "recent_orphan", "exact_ip"]
    assert ok[-1]["status"] == "IDLE"  # "finished" completed the assignment
    assert [(status, reply.get("reason")) for _, status, reply in replies[-2:]] == [
        (409, "already_finished"),
        (400, None),
    ]


def test_the_runnable_endpoint_example_maps_each_failure_to_a_status() -> None:
    example = load_example()
    repo = wm.InMemoryWorkerRepository()
    assert example.handle("/api/nowhere", {"machineId": "10.0.0.1"}, repo)[0] == 404
    assert example.handle("/api/heartbeat", ["not", "an", "object"], repo)[0] == 400
    status, reply = example.handle("/api/assignments/A9/claim", {"machineId": "10.0.0.1"}, repo)
    assert (status, reply["reason"]) == (409, "unknown_assignment")
    status, reply = example.handle(
        "/api/workers", {"machineId": "10.0.0.1", "hostname": "Box"}, repo
    )
    assert (status, reply["rule"], reply["created"]) == (200, "created", True)


# ---------------------------------------------------------------------------------------------
# Packaging: one version, install instructions that work without a package index


def test_the_installed_version_is_the_package_version() -> None:
    import importlib.metadata

    assert importlib.metadata.version("workermatch") == wm.__version__


def test_every_extra_the_docs_name_exists_and_no_page_installs_from_an_index() -> None:
    import importlib.metadata

    extras = set(importlib.metadata.metadata("workermatch").get_all("Provides-Extra") or [])
    for path in [*LINKED_FILES, ROOT / "src" / "workermatch" / "_cli.py"]:
        text = path.read_text(encoding="utf-8")
        named = set(re.findall(r"pip install [^\n]*?'\.\[([\w,-]+)\]'", text))
        assert {e for group in named for e in group.split(",")} <= extras, path.name
        # The project is not on a package index: "pip install 'workermatch[sql]'" would fail.
        assert not re.search(r"pip install ['\"]?workermatch\[", text), path.name


def test_the_project_urls_are_declared() -> None:
    import importlib.metadata

    urls = importlib.metadata.metadata("workermatch").get_all("Project-URL") or []
    assert {u.split(",", 1)[0] for u in urls} == {
        "Homepage",
        "Documentation",
        "Changelog",
        "Issues",
    }
