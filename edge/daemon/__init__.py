"""`edge run`: the on-device daemon. Frame source -> bounded queue -> preprocess + classify -> sinks
(SQLite results, flagged-image archive, differential count, live page and metrics)."""
