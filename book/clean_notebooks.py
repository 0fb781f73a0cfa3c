"""Drop what would make every re-execution of a chapter a diff: per-cell timestamps and widget state.

Used by ``make execute`` after running the chapters; ``python book/clean_notebooks.py NB.ipynb ...``.
"""
import sys

import nbformat

for path in sys.argv[1:]:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
