"""The warehouse: storage and atomic swaps, run-date locks, run dates, data quality gates, and stored rows decoded
into numpy arrays for the model."""
