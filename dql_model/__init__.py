"""dqlrec: nightly deep Q-learning recommendations (config, data contract, simulator, Q-network,
training, evaluation, scoring, publishing, data quality, model registry, CLI)."""

__version__ = "0.1.0"
