"""spark-submit entry point: the whole nightly purge (every table, erasure, audit) in one job.

For schedulers other than the DAGs (see "Whole flows" in :mod:`consentgate.airflow_tasks`):
``spark-submit --py-files consentgate.zip --jars DELTA_JARS jobs/purge.py --conf FILE --args
'{"as_of": null, "dry_run": false, "erase": true}'``.
Prints one JSON object; exits 0, 1 (a table failed or erasure did not verify) or 2 (bad input).
"""

import sys

from consentgate.airflow_tasks import job_main

if __name__ == "__main__":
    sys.exit(job_main("purge"))
