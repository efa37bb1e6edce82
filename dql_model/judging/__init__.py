"""Tonight's challenger against the champion and the baselines: the gate, the baselines, off-policy estimates on
impressions, simulated policy value, the report and its plots."""
