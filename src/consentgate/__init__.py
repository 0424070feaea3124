"""consentgate: enforce creator consent on machine-learning training data.

Spark does the data work, delta-rs reads and commits the Delta log, Airflow schedules the jobs.
"""

__version__ = "0.1.0"
