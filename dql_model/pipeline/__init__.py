"""The nightly run as steps: each DAG task's body, the step runner, and the shop-in-the-loop that chains nights."""
