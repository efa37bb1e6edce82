"""The one way a dqlrec process gets a SparkSession: the jobs' main()s and distributed training.

Owns: reusing an active session (tests, notebooks, a job run in-process) and building one from
``SparkConfig`` otherwise, in UTC (the data contract's timestamps are UTC). Under spark-submit the
master, driver memory and driver options given to spark-submit win; ``cfg.master``,
``cfg.driver_memory`` and ``cfg.driver_java_options`` apply only when the session starts in a plain
Python process.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dql_model.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

UNDER_SPARK_SUBMIT_ENV = "PYSPARK_GATEWAY_PORT"
"""Set by spark-submit for a Python driver: the JVM already runs with its master and memory."""


def session(cfg: SparkConfig, app_name: str, *, console_progress: bool = True) -> tuple[SparkSession, bool]:
    """(The active session, False), else (a new one configured from ``cfg``, True): the caller that
    started a session stops it when its JVM must not outlive the work. ``console_progress=False`` keeps
    Spark's stage bars out of a log that has progress lines of its own (training)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.conf.set("spark.sql.session.timeZone", "UTC")
        return active, False
    builder = (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
    )
    if not console_progress:
        builder = builder.config("spark.ui.showConsoleProgress", "false")
    if UNDER_SPARK_SUBMIT_ENV not in os.environ:
        # The driver JVM starts with the session here, so its memory and flags can still be set.
        builder = builder.master(cfg.master).config("spark.driver.memory", cfg.driver_memory)
        if cfg.driver_java_options:
            builder = builder.config("spark.driver.extraJavaOptions", cfg.driver_java_options)
    started = builder.getOrCreate()
    started.sparkContext.setLogLevel("WARN")  # keep the caller's progress lines readable
    return started, True
