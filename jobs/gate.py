"""spark-submit entry point: the whole gate (allowlist, snapshots, manifest, verify) in one job.

For schedulers other than the DAGs (see "Whole flows" in :mod:`consentgate.airflow_tasks`):
``spark-submit --py-files consentgate.zip --jars DELTA_JARS jobs/gate.py --conf FILE --args
'{"use_case": "U", "model_version": "V", "datasets": null, "as_of": null}'``.
Prints one JSON object; exits 0, 1 (check failed) or 2 (bad input).
"""

import sys

from consentgate.airflow_tasks import job_main

if __name__ == "__main__":
    sys.exit(job_main("gate"))
