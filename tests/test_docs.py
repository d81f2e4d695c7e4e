"""The user-facing pages: docs/results.md is what ``python -m bench.results_doc`` writes from
bench/results (and picks up the contrastive-variants study when its record appears); README and
docs carry no commit hashes or dates (history lives in CHANGELOG.md and commit messages); their
relative links point to files that exist."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bench import results_doc

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_results_page_is_generated_from_bench_results():
    assert (ROOT / "docs" / "results.md").read_text() == results_doc.render(), (
        "docs/results.md is stale: run python -m bench.results_doc")


def test_every_results_record_has_a_section():
    """Every study and benchmark record in bench/results is on the page (bench.md only collects
    the latest sections, which have their own files)."""
    page = results_doc.render()
    for path in sorted(results_doc.RESULTS.glob("*.md")):
        if path.name == "bench.md":
            continue
        assert f"`bench/results/{path.name}`" in page, path.name
    for arms in sorted((ROOT / "bench").glob("study_*.yaml")):
        assert f"`bench/{arms.name}`" in page, arms.name
    assert "gpu_check_H100_sync_free" in page or "`sync_free`" in page


def test_contrastive_study_is_included_when_its_record_exists(tmp_path, monkeypatch):
    fake = tmp_path / "results"
    shutil.copytree(results_doc.RESULTS, fake)
    monkeypatch.setattr(results_doc, "RESULTS", fake)
    for name in ("study_contrastive.md", "study_contrastive.json"):
        (fake / name).unlink(missing_ok=True)
    without = results_doc.render()
    assert "not run yet" in without.split("### Contrastive variants")[1].split("### ")[0]
    (fake / "study_contrastive.md").write_text(
        "Command: `python -m bench.study bench/study_contrastive.yaml --jobs 2`\n\n"
        "| arm | mIoU |\n|---|---:|\n| pipa | 24.6 |\n")
    section = results_doc.render().split("### Contrastive variants")[1].split("### ")[0]
    assert "| pipa | 24.6 |" in section and "not run yet" not in section
    assert "`python -m bench.study bench/study_contrastive.yaml --jobs 2`" in section


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_hold_no_commit_hashes_or_dates(page):
    text = page.read_text()
    assert not results_doc.DATE.search(text), results_doc.DATE.search(text).group(0)
    hashes = [h for h in results_doc.HASH.findall(text)]
    assert not hashes, hashes


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_every_docs_reference_in_the_code_names_an_existing_file_and_section():
    """``docs/X.md §N`` and ``README "Heading"`` in the package, bench and notebook sources point
    at a file that exists and a section it has (a renumbered or renamed section fails here)."""
    import re

    root = Path(__file__).resolve().parents[1]
    headings = {}

    def sections(doc: Path) -> set[str]:
        if doc not in headings:
            text = doc.read_text() if doc.is_file() else ""
            headings[doc] = set(re.findall(r"^#+ (.+?)\s*$", text, flags=re.M))
        return headings[doc]

    bad = []
    sources = [*root.glob("cluda_kit/**/*.py"), *root.glob("bench/*.py"), *root.glob("notebooks/*.py")]
    for path in sources:
        text = path.read_text()
        for doc, num in re.findall(r"(docs/[\w.-]+\.md)(?: §(\d+))?", text):
            if not (root / doc).is_file():
                bad.append(f"{path.relative_to(root)}: {doc} does not exist")
            elif num and not any(h.startswith(f"{num}.") for h in sections(root / doc)):
                bad.append(f"{path.relative_to(root)}: {doc} has no section {num}")
        for heading in re.findall(r'README "([^"]+)"', text):
            if not any(h == heading or h.startswith(heading) for h in sections(root / "README.md")):
                bad.append(f'{path.relative_to(root)}: README has no section "{heading}"')
    assert not bad, "\n".join(bad)
