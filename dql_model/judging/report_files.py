"""The names of the files in a night's report folder (``cfg.layout.report(run_date)``).

Owns those names, so that the reader of the run history (history.py) and the report's writer
(report.py, which draws that history's trend) both import them from here and not from each other.
"""

EVALUATION = "evaluation.json"
"""``gate.NightEvaluation.to_json`` plus the plot names and the training seconds, written by the gate task."""
SUMMARY = "summary.json"
"""What was published, the evaluation and the ETL counts, written by the report task."""
MARKDOWN = "report.md"
TRAINING_FAILURE = "training_failure.json"
"""Written by a train_model that raised: its error, for the gate to name when the champion scores instead."""
TREND_FILE = "run_trend.json"
"""The figures of the run history's trend (history.trend) beside report.md: the data plots.run_trend draws."""
