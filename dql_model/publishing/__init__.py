"""Getting lists to their readers: the atomic publish of a night's recommendations, the sinks (S3, SQL), and
marketing's audiences."""
