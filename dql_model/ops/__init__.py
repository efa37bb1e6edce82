"""Running on a machine: the local services of `make airflow`, thread counts, the Spark job launcher, Airflow's log."""
