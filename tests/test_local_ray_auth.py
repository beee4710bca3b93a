"""The local Ray that `pretrain` starts serves its dashboard and Jobs API on 127.0.0.1: with token
auth on, another local user cannot submit code through it, and the token file is the owner's."""

import json
import subprocess
import sys

PROBE = """
import json, os, urllib.error, urllib.request
import ray._private.worker
from electra_ray.driver import start_local_ray

start_local_ray(1)
dashboard = ray._private.worker.global_worker.node.address_info["webui_url"]
token_file = os.path.expanduser("~/.ray/auth_token")
answers = {}
for who, headers in (("anyone", {}), ("owner", {"Authorization": "Bearer " + open(token_file).read().strip()})):
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://{dashboard}/api/jobs/", headers=headers)) as r:
            answers[who] = r.status
    except urllib.error.HTTPError as error:
        answers[who] = error.code
answers["token_file_mode"] = os.stat(token_file).st_mode & 0o777
print("ANSWERS " + json.dumps(answers))
"""


def test_the_local_dashboard_refuses_requests_without_the_token():
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    answers = json.loads(run.stdout.split("ANSWERS ")[1])
    assert answers == {"anyone": 401, "owner": 200, "token_file_mode": 0o600}
