"""Memory management: `facts` (what the machine has), `policy` (the only place that decides), `apply` (carries the
decisions out on a model), `fallback` (out-of-memory retries)."""
