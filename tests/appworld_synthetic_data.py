"""Write a minimal AppWorld data folder offline, with appworld's own code, in its own format.

Run with the Python of a venv where ``appworld==0.1.3.post1`` is installed and
``appworld install`` has been run (this file is never imported by the project)::

    /work/appworld-venv/bin/python tests/appworld_synthetic_data.py ROOT

It writes ``ROOT/data``: the API docs of every app (``api_docs/standard``), the split files
(``datasets/*.txt``) and, per task, ``tasks/<id>/specs.json``, ``dbs/`` (every app's
database, empty but for the supervisor, their task and the API docs) and ``ground_truth/``
(answer, test data and an ``evaluation.py`` of AppWorld's shape). ``appworld serve
environment --root ROOT`` then serves these tasks.
"""

from __future__ import annotations

import json
import os
import sys
from textwrap import dedent

SUPERVISOR = {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com", "phone_number": "5550101"}
# task id -> (instruction, answer); every task asks for a supervisor detail.
TASKS = {
    "0a1b2c3_1": ("What is my email address as stored in the supervisor app?", SUPERVISOR["email"]),
    "0a1b2c3_2": ("What is my phone number as stored in the supervisor app?", SUPERVISOR["phone_number"]),
}
SPLITS = {"train": ["0a1b2c3_1"], "dev": ["0a1b2c3_2"], "test_normal": ["0a1b2c3_2"], "test_challenge": []}
EVALUATION = dedent(
    '''
    import json


    def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
        task = models.end.supervisor.Task.all()[0]
        with test("""assert the task was completed with status success."""):
            assert task.status == "success"
        with test("""assert answers match."""):
            test.answer(json.loads(task.answer), ground_truth_answer)
    '''
).lstrip()
TEST_DATA = [
    {"requirement": "assert the task was completed with status success.", "label": "no_op_fail"},
    {"requirement": "assert answers match.", "label": "no_op_fail"},
]


def write_json(value, *parts: str) -> None:
    path = os.path.join(*parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def main(root: str) -> None:
    from appworld import update_root

    update_root(root)
    from appworld.apps import get_all_apps
    from appworld.collections.api_docs import ApiDocCollection
    from appworld.collections.models import ModelCollection
    from appworld.common.constants import CANARY_STRING, DB_VERSION
    from appworld.common.path_store import path_store

    data = path_store.data
    apps = get_all_apps(skip_admin=True)
    docs = ApiDocCollection.build(load_apps=tuple(apps))
    api_doc_rows = [
        {k: v for k, v in doc.items() if k != "app_name"} | {"app_name_": app_name}
        for app_name, api_name_to_doc in docs.items()
        for doc in api_name_to_doc.values()
    ]
    for app_name, api_name_to_doc in docs.items():
        standard = {name: dict(doc) | {"canary_string": CANARY_STRING} for name, doc in api_name_to_doc.items()}
        write_json(standard, data, "api_docs", "standard", f"{app_name}.json")
    for split, ids in SPLITS.items():
        os.makedirs(os.path.join(data, "datasets"), exist_ok=True)
        with open(os.path.join(data, "datasets", f"{split}.txt"), "w") as f:
            f.write("".join(f"{t}\n" for t in ids))
    for task_id, (instruction, answer) in TASKS.items():
        directory = os.path.join(data, "tasks", task_id)
        write_json(
            {"instruction": instruction, "supervisor": SUPERVISOR, "datetime": "2023-05-18T12:00:00",
             "db_version": DB_VERSION, "canary_string": CANARY_STRING},
            directory, "specs.json",
        )
        memory = f":memory:synthetic-{task_id}"
        models = ModelCollection.load(to_db_home_path=memory, from_db_home_path=memory,
                                      load_apps=get_all_apps(), create_db=True)
        person = SUPERVISOR | {"birthday": "1990-12-10", "sex": "female"}
        models.admin.MainUser.create_save(**person)
        models.supervisor.Supervisor.create_save(**person)
        models.supervisor.Task.create_save(supervisor_id=1, instruction=instruction)
        for row in api_doc_rows:
            models.api_docs.ApiDoc.create_save(**row)
        models.save(os.path.join(directory, "dbs"), delete_if_exists=True)
        ground_truth = os.path.join(directory, "ground_truth")
        write_json({"difficulty": 1, "num_apps": 1, "num_apis": 2, "num_solution_code_lines": 2},
                   ground_truth, "metadata.json")
        write_json(answer, ground_truth, "answer.json")
        write_json({}, ground_truth, "public_data.json")
        write_json({}, ground_truth, "private_data.json")
        write_json(TEST_DATA, ground_truth, "test_data.json")
        with open(os.path.join(ground_truth, "evaluation.py"), "w") as f:
            f.write(EVALUATION)


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]))
