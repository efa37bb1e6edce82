"""Which failures are bad input: the one place that says so.

Bad input fails the same way however often it is retried: a raw partition that is missing or empty,
a table that breaks its data contract, a configuration value or trigger param that is refused, a run
date that is not a calendar date, a pinned model version that is not in the registry. Every such
error derives from ``InputError``; the DAG fails its task at once, without Airflow's retries, and
the CLI prints it as one line. Across a process boundary (a Spark job under spark-submit) bad input
is the exit status ``EXIT_BAD_INPUT``. Anything else (S3, the network, a Spark job that died) is treated as
possibly transient and keeps its retries.

The subclasses also derive from the built-in exception a caller would expect (``FileNotFoundError``,
``ValueError``), so existing ``except`` clauses still catch them. Standard library only: the DAG
imports this module inside its tasks, the configuration at import time.

Input errors defined elsewhere: ``dql_model.config.ConfigError``, ``dql_model.warehouse.quality.DataQualityError`` and
``dql_model.evaluation.ope.LogError``.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2
"""Exit status of a process that failed on bad input (a Spark job, the CLI): whoever launched it must not
retry. 2 is also argparse's for a usage error, which is bad input too."""


class InputError(Exception):
    """Bad input (data, configuration, trigger params): retrying cannot help; fix the input and rerun."""


class MissingInput(InputError, FileNotFoundError):
    """An input the run reads does not exist: a raw partition, the catalogue, a pinned model version."""


class EmptyInput(InputError, ValueError):
    """An input exists but has no rows, and the configuration says that fails the run."""


class BadDate(InputError, ValueError):
    """A run date or event date that is not a calendar day as ``YYYY-MM-DD``."""

