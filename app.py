"""Hugging Face Space entry point (Gradio SDK, CPU): `python app.py`.

Serves tunelab's chat UI for the models listed in TUNELAB_MODELS (comma-separated: run
directories, merged folders, .gguf files or catalog names), plus every run under TUNELAB_RUNS
(default `runs/` next to this file); with neither, the default model. The settings and how it
listens: tunelab/serve/space_app.py, which the app.py of an exported Space folder calls too.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # use this checkout's tunelab even when it is not pip-installed

from tunelab.serve.space_app import checkout_ui, launch  # noqa: E402

demo = checkout_ui(HERE)

if __name__ == "__main__":
    launch(demo)
