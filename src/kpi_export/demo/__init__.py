"""`make run`: the real worker, end to end, on embedded defaults (a private Redis, a SQLite file)."""
