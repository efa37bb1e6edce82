"""The data contract: table schemas, warehouse paths, row rules and the pipeline's step names. Names and paths only, no I/O;
standard library (and pyarrow types) only, so the DAG files can import it at parse time."""
