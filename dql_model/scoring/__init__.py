"""Top-K recommendations per user, from a Q-network and tonight's catalogue.

- ``policy``: how a user's K slots are filled (greedy, or explored with propensities) and the
  hash-seeded draws that make both engines and reruns pick the same items.
- ``ranking``: the core both engines run: ``Catalogue``, the canonical user batches, masks,
  deterministic top-K, the popularity fallback, ``Ranker``.
- ``payload``: ``ScoringPayload``, the model and catalogue the Spark engine broadcasts to executors.
- ``engines``: the torch engine (in process) and the Spark engine (the job ``jobs/score_recommendations.py``
  as a child process) behind one ``ScoringSummary``; ``score`` picks by ``score.engine``.

Import from the submodules; this package re-exports nothing.
"""
