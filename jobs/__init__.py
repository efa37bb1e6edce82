"""Spark jobs: pure ``DataFrame -> DataFrame`` transforms and thin ``main(argv)`` entry points.

Pipeline of the nightly build (``jobs.build_training_data``)::

    raw events --clean_events--> accepted (+ quarantine)
               --build_item_index--> item_index            (append-only across nights)
               --update_user_states--> user_states         (yesterday's states + tonight's events;
                 or build_user_states                       a full rebuild from the whole history)
               --sessionize, build_transitions--> transitions (states seeded by the states of the
                                                              day before the training window)

Incremental nights read only the partitions they ingest, the training window and
``lookback_days`` before it; ``--full-rebuild`` reads every partition and gives the same tables.
"""
