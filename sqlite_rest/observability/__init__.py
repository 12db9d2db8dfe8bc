"""What an operator sees: Prometheus metrics (``metrics.py``), logs (``logs.py``), profiles
(``pprof.py``) and the health routes (``health.py``)."""
