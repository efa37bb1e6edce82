"""Spark jobs: pure ``DataFrame -> DataFrame`` transforms and thin ``main(argv)`` entry points.

Pipeline of the nightly build (``jobs.build_training_data``)::

    raw events --clean_events--> accepted (+ quarantine)
               --sessionize--> events with a session_id
               --build_item_index--> item_index
               --build_user_states--> user_states
               --build_transitions--> transitions
"""
