"""Robustness reports: JSON for tools, Markdown for people, figures, audit hashes."""

from advtrain.report.compare import Comparison, compare_files, compare_reports, load_report
from advtrain.report.html import render_html
from advtrain.report.ledger import LedgerCheck, append_entry, verify_ledger
from advtrain.report.schema import (
    REPORT_SCHEMA,
    SCHEMA_VERSION,
    ReportSchemaError,
    check_report,
    validate_report,
)
from advtrain.report.writer import (
    environment,
    markdown,
    result_rows,
    sha256_file,
    sha256_text,
    summary_table,
    write_report,
)

__all__ = [
    "REPORT_SCHEMA",
    "SCHEMA_VERSION",
    "Comparison",
    "LedgerCheck",
    "ReportSchemaError",
    "append_entry",
    "check_report",
    "compare_files",
    "compare_reports",
    "environment",
    "load_report",
    "markdown",
    "render_html",
    "result_rows",
    "sha256_file",
    "sha256_text",
    "summary_table",
    "validate_report",
    "verify_ledger",
    "write_report",
]
