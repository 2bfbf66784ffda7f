"""Robustness reports: JSON for tools, Markdown for people, figures, audit hashes."""

from advtrain.report.writer import (
    SCHEMA_VERSION,
    environment,
    markdown,
    sha256_file,
    sha256_text,
    summary_table,
    write_report,
)

__all__ = [
    "SCHEMA_VERSION",
    "environment",
    "markdown",
    "sha256_file",
    "sha256_text",
    "summary_table",
    "write_report",
]
