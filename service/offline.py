"""The A/B report outside the service: read from a store file or URL (`tuneserve ab-report`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.config import ServingConfig, config_path, load_serving_config
from service.dialect import connect, is_url, redact
from service.report import build_report, format_report
from service.store import Store
from tuneserve.errors import TuneserveError


def open_store(db: Path | str, settings: ServingConfig) -> Store:
    """The experiment store at ``db``; one that does not exist is an error, never created."""
    if is_url(db):
        conn = connect(db, settings.store.busy_timeout_ms, durable=True)
        try:  # a report reads a store; it does not create one in an empty database
            exists = conn.table_exists("schema_version")
        finally:
            conn.close()
        if not exists:
            raise TuneserveError(f"no experiment store at {redact(db)}: pass --db or serve first")
        return Store(db)
    path = Path(db)
    if not path.is_file():
        raise TuneserveError(f"no experiment store at {path}: pass --db or serve first")
    return Store(path)


def offline_report(config: Path | None = None, db: str | None = None) -> dict[str, Any]:
    """The report of the store ``db`` (default: the serving config's store)."""
    settings = load_serving_config(config or config_path())
    return build_report(open_store(db or settings.store.location(), settings), settings)


def print_report(
    config: Path | None, db: str | None, as_json: bool = False, html: str | None = None
) -> None:
    """Print the report (a table, or JSON) and write its HTML page to ``html`` if given."""
    report = offline_report(config, db)
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    if html:
        from service.report_page import render_page

        Path(html).write_text(render_page(report), encoding="utf-8")
        print(f"HTML report written to {html}")
