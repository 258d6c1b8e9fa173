"""notebooks/quickstart.ipynb runs top to bottom (small settings), as in Colab."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  monkeypatch.setenv("NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("NOTEBOOK_WORK_DIR", str(tmp_path))
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(notebook, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}
                 ).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "trainable parameters" in text
  assert "'AP50'" in text
  assert "saved_model.pb" in text and "label_map.json" in text
  images = [o for o in outputs if o.output_type == "display_data" and
            "image/png" in o.get("data", {})]
  assert len(images) == 4  # The architecture and three detection pictures.
  assert os.path.exists(tmp_path / "export" / "saved_model.pb")
