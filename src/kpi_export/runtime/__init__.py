"""The worker at run time: its lifecycle (signals, waits, drain), the job handler, the event listeners, the
Redis watch, the health endpoints and metrics, and the supervisor of WORKER_PROCESSES."""
