"""spark-submit entry point: the nightly purge's decisions, once for every dataset and snapshot.

Submitted by the Airflow DAGs in ``spark-submit`` mode (see :mod:`consentgate.airflow_tasks`):
``spark-submit --py-files consentgate.zip jobs/decide_purge.py --conf FILE --args-file FILE --result FILE``.
Prints one JSON object; exits 0, 1 (check failed) or 2 (bad input).
"""

import sys

from consentgate.airflow_tasks import job_main

if __name__ == "__main__":
    sys.exit(job_main("decide_purge"))
