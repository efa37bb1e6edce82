"""Judging lists with numbers: ranking metrics, offline ranking over a validation split, off-policy estimators and
their intervals. numpy only; no model is trained or loaded here."""
