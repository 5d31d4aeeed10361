"""The experiments' committed plots, served from where they are (no copy under docs/).

A page links ``../experiments/results/NAME.png`` (from docs/papers/); this MkDocs hook adds every
``experiments/results/*.png`` of the repository to the site's files under that path, so the link
resolves and the strict build checks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
SHARED = ("experiments/results/*.png",)


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    for pattern in SHARED:
        for path in sorted(REPO.glob(pattern)):
            files.append(
                File(
                    path.relative_to(REPO).as_posix(),
                    src_dir=str(REPO),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
    return files
