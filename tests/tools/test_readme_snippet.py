"""The README's endpoint example is taken from the FastAPI example service, word for word: each
part of its Python block (the parts are separated by a line ``...``) is a passage of
``examples/fastapi_service/app.py``, in the file's order.  The service's own tests
(``examples/fastapi_service/tests``) exercise those routes, in process and over HTTP, so the
README shows code that runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fastapi_service" / "app.py"


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Use it in an endpoint\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "no python block under 'Use it in an endpoint'"
    return found.group(1)


def parts(snippet: str) -> list[str]:
    return [part.strip("\n") for part in re.split(r"^\.\.\.$", snippet, flags=re.MULTILINE)]


def test_the_readme_endpoint_snippet_is_a_literal_excerpt_of_the_fastapi_example() -> None:
    source = EXAMPLE.read_text(encoding="utf-8")
    snippet = readme_snippet()
    at = 0
    for part in parts(snippet):
        assert part, "an empty part: '...' lines must separate passages"
        found = source.find(part, at)
        assert found >= 0, f"not a passage of {EXAMPLE.name} (after offset {at}):\n{part}"
        at = found + len(part)
    compile(snippet, "README.md", "exec")  # and Python as it stands ("..." is an expression)


def test_the_snippet_shows_the_async_heartbeat_and_claim_routes() -> None:
    snippet = readme_snippet()
    assert '@router.post("/api/heartbeat")\nasync def heartbeat(' in snippet
    assert '@router.post("/api/assignments/{assignment_id}/claim")\nasync def claim(' in snippet
    assert "await aio.apply_event(" in snippet


def test_parts_split_on_ellipsis_lines_only() -> None:
    assert parts("a\n...\nb = ...\n") == ["a", "b = ..."]
