"""`make bench`: this worker against the Node original, on the same Redis and database, in one run.

Not part of `make test`: speed is shown here, never by a timed test. See bench/README.md.
"""
