"""The book: chapters follow the conventions, and the built site shows their figures and players.

The site checks read ``_build/html``, which ``make test`` builds (with
warnings as errors) before running pytest.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root"):
                files.append(value)
            else:
                files.extend(_toc_files(value))
    elif isinstance(node, list):
        for item in node:
            files.extend(_toc_files(item))
    return files


CHAPTERS = sorted(f for f in _toc_files(TOC) if f.startswith("notebooks/"))
# Chapters about the network's internals have nothing to listen to; every other one plays what it discusses.
SILENT_CHAPTERS = {"notebooks/03_sinusoidal_embeddings", "notebooks/06_unet"}


def _notebook(chapter: str) -> dict:
    return json.loads((ROOT / f"{chapter}.ipynb").read_text())


def _plays_sound(nb: dict) -> bool:
    return any("<audio" in "".join(out.get("data", {}).get("text/html", ""))
               for cell in nb["cells"] if cell["cell_type"] == "code" for out in cell.get("outputs", []))


def test_toc_lists_every_chapter_in_reading_order():
    on_disk = sorted(f"notebooks/{p.stem}" for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert CHAPTERS == on_disk
    in_toc = [f for f in _toc_files(TOC) if f.startswith("notebooks/")]
    assert in_toc == sorted(in_toc), "chapters must appear in numeric order"
    for required in ("notebooks/01_audio_and_mel", "notebooks/02_dataset", "notebooks/03_sinusoidal_embeddings",
                     "notebooks/04_noise_schedules", "notebooks/05_text_conditioning", "notebooks/06_unet",
                     "notebooks/07_training", "notebooks/08_sampling", "notebooks/09_griffin_lim",
                     "notebooks/10_evaluation", "notebooks/11_experiments", "notebooks/12_playground"):
        assert required in CHAPTERS


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_follows_the_conventions(chapter):
    nb = _notebook(chapter)
    path = ROOT / f"{chapter}.ipynb"
    assert path.stat().st_size < 3_000_000, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"
    cells = nb["cells"]
    setup = cells[0]
    assert setup["cell_type"] == "code" and "remove-cell" in setup["metadata"].get("tags", [])
    source = "".join(setup["source"])
    assert '"google.colab" in sys.modules' in source, "the setup cell must install only on Colab"
    assert CONFIG["repository"]["url"] in source, "the setup cell must install from _config.yml's repository"
    parameters = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(parameters) == 1 and "profile()" in "".join(parameters[0]["source"])
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code[1:]), "every cell after setup must have been executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"committed outputs contain an error: {errors[0].get('ename')}"
    counts = [c["execution_count"] for c in code[1:]]
    assert counts == sorted(counts), "outputs must come from one top-to-bottom run"
    assert any("# NBVAL_CHECK_OUTPUT" in "".join(c["source"]) for c in code)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    if chapter not in SILENT_CHAPTERS:
        assert _plays_sound(nb), "this chapter must play what it talks about (audio players)"
    assert not nb["metadata"].get("widgets"), "no widget state in committed notebooks"


def _page(chapter: str) -> str:
    page = HTML / f"{chapter}.html"
    if not page.exists():
        pytest.fail(f"{page} is missing: build the site first (make test does: jupyter-book build . -W)")
    return page.read_text()


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_built_page_has_figures_and_players(chapter):
    html = _page(chapter)
    assert re.search(r"<img[^>]+src=\"[^\"]+\.png\"", html), "no PNG figure on the page"
    if _plays_sound(_notebook(chapter)):
        assert "<audio" in html, "the chapter plays sound but the page has no <audio> player"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_colab_button_points_at_the_real_notebook(chapter):
    html = _page(chapter)
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    branch = CONFIG["repository"]["branch"]
    link = f"https://colab.research.google.com/github/{repo}/blob/{branch}/{chapter}.ipynb"
    assert link in html, f"no Colab link {link}"
    assert (ROOT / f"{chapter}.ipynb").exists()


def test_intro_and_references_are_built():
    assert (HTML / "book" / "intro.html").exists()
    references = (HTML / "book" / "references.html").read_text()
    for author in ("Sohl-Dickstein", "Song", "Ho", "Nichol", "Saharia", "Popov", "Kong", "Yang", "Huang",
                   "Forsgren", "Agostinelli", "Vaswani", "Griffin", "Perraudin", "Wang"):
        assert author in references, f"{author} missing from the references page"
