"""notebooks/quickstart.ipynb runs top to bottom (nbclient) on the smoke config."""

import pathlib

import nbclient
import nbformat

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs_and_shows_selections_regret_and_figures(
    mini_cache_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("MODEL_SEARCH_CACHE", str(mini_cache_dir))
  monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "work"))
  nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
  assert "task_agnostic" in html and "relative_regret" in html  # The selection table.
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 2  # The two figures.
  assert (tmp_path / "work" / "report" / "summary.md").exists()
