"""MkDocs hook: one API reference page per `api/<module>.md` entry of the nav.

The nav in mkdocs.yml is the only list of API pages. For every entry
`api/<dotted.module.name>.md` that has no file in docs/, this writes a page whose
body is the mkdocstrings directive `::: <dotted.module.name>`, so the page is
generated from the module's docstrings at build time.
"""

from __future__ import annotations

from mkdocs.structure.files import File

API_DIR = "api/"


def _nav_paths(item):
    if isinstance(item, str):
        yield item
    elif isinstance(item, dict):
        for value in item.values():
            yield from _nav_paths(value)
    elif isinstance(item, list):
        for value in item:
            yield from _nav_paths(value)


def on_files(files, config):
    for path in _nav_paths(config["nav"] or []):
        if not (path.startswith(API_DIR) and path.endswith(".md")):
            continue
        if files.get_file_from_path(path) is not None:
            continue  # a hand-written page wins
        module = path[len(API_DIR) : -len(".md")]
        content = f"# {module}\n\n::: {module}\n"
        files.append(File.generated(config, path, content=content))
    return files
