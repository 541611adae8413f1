"""Start or stop the demo's throwaway PostgreSQL (loopback only) with the runbook's sample data.

    demo_db.py start STATE_DIR   -> prints KEY=VALUE lines for the demo script
    demo_db.py stop STATE_DIR
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from servers import PostgresServer, load_sample_data  # noqa: E402


def start(state_dir):
    state_file = os.path.join(state_dir, "pg.json")
    if os.path.exists(state_file):
        with open(state_file) as handle:
            state = json.load(handle)
        server = PostgresServer(base_dir=state["base_dir"])
        server.port = state["port"]
        if not server.running():
            server.start()
    else:
        os.makedirs(state_dir, exist_ok=True)
        server = PostgresServer(base_dir=os.path.join(os.path.abspath(state_dir), "pg"))
        os.makedirs(server.base_dir, exist_ok=True)
        server.init().start().setup_app()
        server.create_database("infer_forge")
        load_sample_data(server, "infer_forge", customers=500, orders=20000)
        with open(state_file, "w") as handle:
            json.dump({"base_dir": server.base_dir, "port": server.port}, handle)
    print(f"PGPORT={server.port}")
    print(f"PGUSER={server.app_user}")


def stop(state_dir):
    state_file = os.path.join(state_dir, "pg.json")
    if not os.path.exists(state_file):
        return
    with open(state_file) as handle:
        state = json.load(handle)
    server = PostgresServer(base_dir=state["base_dir"])
    server.destroy()
    os.unlink(state_file)


if __name__ == "__main__":
    {"start": start, "stop": stop}[sys.argv[1]](sys.argv[2])
