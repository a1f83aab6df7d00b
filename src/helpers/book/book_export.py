"""The book's copy of an executed notebook: parameter cells hidden, progress bars and warnings dropped, no paths of
the build machine."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..core.io import ConfigError, atomic_write_text
from . import checkout

_WIDGET = "application/vnd.jupyter.widget-view+json"


def clean_for_book(nb: dict[str, Any], *, root: Path | None = None) -> dict[str, Any]:
    """An executed notebook as readers download it from the book (a new dict; ``nb`` is unchanged).

    * papermill's injected-parameters cell and the notebook's own defaults cell are tagged ``remove-cell``: the
      chapter's parameter table shows the values used instead (both cells stay in the file, so the notebook
      still runs and papermill still finds its ``parameters`` cell);
    * progress bars and library warnings are dropped: ``stderr`` streams and progress-bar widgets;
    * paths of the build machine become relative: the checkout (``root``) and the home folder.
    """
    root = Path(root if root is not None else checkout.ROOT).resolve()
    out = json.loads(json.dumps(nb))
    for cell in out.get("cells", []):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if ({"injected-parameters", "parameters"} & set(tags)) and "remove-cell" not in tags:
            tags.append("remove-cell")
        if not tags:
            del cell["metadata"]["tags"]
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                continue
            data = o.get("data")
            if isinstance(data, dict) and _WIDGET in data:
                data.pop(_WIDGET)
                data.pop("text/plain", None)  # a widget's text fallback is its repr: "HBox(children=...)"
                if not data:
                    continue
            kept.append(o)
        cell["outputs"] = kept
    text = json.dumps(out)
    for prefix, repl in ((f"{root}/", ""), (str(root), "."), (f"{Path.home()}/", "~/")):
        text = text.replace(json.dumps(prefix)[1:-1], json.dumps(repl)[1:-1])
    text = re.sub(r"/\.([0-9]{2}_[a-z0-9_]+)\.[0-9a-f]{8}\.tmp/", r"/\1/", text)  # a stage's staging folder
    return json.loads(text)


def book_copy(source: str | Path, dest: str | Path) -> Path:
    """Write the book's copy of an executed notebook (:func:`clean_for_book`), atomically."""
    nb = json.loads(Path(source).read_text())
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(dest, json.dumps(clean_for_book(nb), indent=1, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the book copy {dest} ({exc.strerror or exc}); make it writable") from None
    return dest
