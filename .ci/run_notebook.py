"""Executes a notebook top to bottom in the current Python's Jupyter kernel, from the repository
root, and fails on the first cell that raises (CI runs notebooks/quickstart.ipynb this way with
H2MT_NOTEBOOK_TINY=1). The notebook file is not modified.

    python .ci/run_notebook.py notebooks/quickstart.ipynb [--timeout 1200]
"""

import argparse
import os
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    nb = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": root}})
    try:
        client.execute()
    except CellExecutionError as e:
        print(f"{args.notebook}: a cell failed\n{e}", file=sys.stderr)
        sys.exit(1)
    cells = sum(c.cell_type == "code" for c in nb.cells)
    print(f"{args.notebook}: {cells} code cells ran")


if __name__ == "__main__":
    main()
