"""Your own code starting a task, as a Django view or a FastAPI route would.

It calls ``.delay()`` as usual; taskcast records the task before it is published, so
the service can answer for it at once. Where the service has a secret, it also mints the
watch token that lets a browser follow this one task.

    MYPROJ_REDIS_URL=redis://127.0.0.1:6379/0 TASKCAST_SECRET=... python producer.py 5
"""

import json
import os
import sys

import taskcast

from myproj.tasks import build_report

if __name__ == "__main__":
    pages = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    result = build_report.delay(pages)
    reply = {"task_id": result.id}
    secret = os.environ.get("TASKCAST_SECRET")
    if secret:
        reply["token"] = taskcast.sign_watch_token(result.id, secret=secret)
    print(json.dumps(reply))
